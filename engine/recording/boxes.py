"""The fragmented MP4 the muxer writes, read box by box: init segment, fragments, what a fragment holds.

FFmpeg's mov muxer (fragmented, ``empty_moov``) writes ``ftyp`` + ``moov`` once, then ``moof`` +
``mdat`` per fragment. ``FragmentSplitter`` is the write-only file object the muxer writes to:
it hands over the init segment once and each fragment as soon as its ``mdat`` is complete. The
recorder stores them as files (engine/recording/segments.py), live HLS keeps them in memory as
parts (engine/hls/segmenter.py). Top-level boxes after the last fragment (the ``mfra`` index)
are not needed by HLS players and are dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: ``sample_is_non_sync_sample`` in an ISO BMFF sample flags word.
NON_SYNC = 0x00010000


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, pos + 8, pos + max(size, 8)
        pos += max(size, 8)


@dataclass(frozen=True)
class TrackRun:
    """What one track of a fragment holds: decode time of its first sample, total duration, sync start."""

    track: int
    start: int | None
    duration: int
    samples: int
    starts_with_sync: bool


def _track_run(moof: bytes, begin: int, end: int) -> TrackRun:
    """Reads one ``traf``: ``tfhd`` defaults, ``tfdt`` start, every ``trun``'s durations and first flags."""
    track, default_duration, default_flags, start = 0, 0, 0, None
    duration = samples = 0
    first_flags: int | None = None
    for kind, pos, _ in _boxes(moof, begin, end):
        flags = struct.unpack_from(">I", moof, pos)[0] & 0xFFFFFF
        version = moof[pos]
        if kind == b"tfhd":
            track = struct.unpack_from(">I", moof, pos + 4)[0]
            field = pos + 8
            for bit, width in ((0x01, 8), (0x02, 4), (0x08, 4), (0x10, 4), (0x20, 4)):
                if flags & bit:
                    if bit == 0x08:
                        default_duration = struct.unpack_from(">I", moof, field)[0]
                    elif bit == 0x20:
                        default_flags = struct.unpack_from(">I", moof, field)[0]
                    field += width
        elif kind == b"tfdt":
            start = struct.unpack_from(">Q" if version else ">I", moof, pos + 4)[0]
        elif kind == b"trun":
            count = struct.unpack_from(">I", moof, pos + 4)[0]
            field = pos + 8 + (4 if flags & 0x01 else 0)
            first_sample_flags = None
            if flags & 0x04:
                first_sample_flags = struct.unpack_from(">I", moof, field)[0]
                field += 4
            for index in range(count):
                sample_duration, sample_flags = default_duration, default_flags
                if flags & 0x100:
                    sample_duration = struct.unpack_from(">I", moof, field)[0]
                    field += 4
                if flags & 0x200:
                    field += 4
                if flags & 0x400:
                    sample_flags = struct.unpack_from(">I", moof, field)[0]
                    field += 4
                if flags & 0x800:
                    field += 4
                if index == 0 and first_sample_flags is not None:
                    sample_flags = first_sample_flags
                if first_flags is None:
                    first_flags = sample_flags
                duration += sample_duration
            samples += count
    sync = first_flags is not None and not first_flags & NON_SYNC
    return TrackRun(track, start, duration, samples, sync)


def track_runs(moof: bytes) -> dict[int, TrackRun]:
    """Per track id, what a ``moof`` box (header included) holds of it."""
    return {run.track: run for kind, pos, end in _boxes(moof, 8, len(moof)) if kind == b"traf"
            for run in [_track_run(moof, pos, end)]}


class FragmentSplitter:
    """A write-only file object for the muxer: ``on_init(bytes)`` once, then ``on_fragment(bytes, moof)``
    for each complete ``moof`` + ``mdat`` (``moof`` is that fragment's ``moof`` box, to read with
    ``track_runs``)."""

    def __init__(self, on_init: Callable[[bytes], None], on_fragment: Callable[[bytes, bytes], None]) -> None:
        self._on_init = on_init
        self._on_fragment = on_fragment
        self._buffer = bytearray()
        self._init = bytearray()
        self._fragment = bytearray()
        self._moof = b""

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buffer)
            header = 8
            if size == 1:
                if len(self._buffer) < 16:
                    break
                size = struct.unpack_from(">Q", self._buffer, 8)[0]
                header = 16
            if size < header:
                raise ValueError(f"bad MP4 box size {size} from the muxer")
            if len(self._buffer) < size:
                break
            box = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._box(kind, box)
        return len(data)

    def _box(self, kind: bytes, box: bytes) -> None:
        if kind in (b"ftyp", b"moov"):
            self._init += box
            if kind == b"moov":
                self._on_init(bytes(self._init))
        elif kind in (b"styp", b"sidx", b"moof"):
            self._fragment += box
            if kind == b"moof":
                self._moof = box
        elif kind == b"mdat":
            self._fragment += box
            fragment, moof = bytes(self._fragment), self._moof
            self._fragment.clear()
            self._moof = b""
            self._on_fragment(fragment, moof)

    def flush(self) -> None:
        """Fragments are handed over whole in ``write``; nothing is held for the muxer's flushes."""

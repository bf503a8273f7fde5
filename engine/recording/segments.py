"""Cuts the fragmented MP4 the muxer writes into CMAF files: one init segment, then one file per fragment.

The muxer (FFmpeg's mov, fragmented) writes ``ftyp`` + ``moov`` once, then ``moof`` + ``mdat``
per fragment. Each complete fragment goes to its own file as soon as its ``mdat`` ends, flushed
and fsynced, so a crash loses at most the fragment in progress. Top-level boxes after the last
fragment (the ``mfra`` index) are not needed by HLS players and are dropped.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

INIT = "init.mp4"


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.m4s"


def _fragment_start(moof: bytes) -> int | None:
    """The first track's ``baseMediaDecodeTime`` (tfdt) in a ``moof``, in that track's timescale."""
    pos = 8
    while pos + 8 <= len(moof):
        size, kind = struct.unpack_from(">I4s", moof, pos)
        if kind == b"traf":
            inner = pos + 8
            while inner + 8 <= pos + size:
                inner_size, inner_kind = struct.unpack_from(">I4s", moof, inner)
                if inner_kind == b"tfdt":
                    version = moof[inner + 8]
                    return struct.unpack_from(">Q" if version else ">I", moof, inner + 12)[0]
                inner += max(inner_size, 8)
            return None
        pos += max(size, 8)
    return None


class SegmentFiles:
    """A write-only file object for the muxer that stores init and media segments in ``directory``.

    ``on_segment(name, size, start)`` is told of each media segment written (``start``: its first
    video decode time, in the video track's timescale).
    """

    def __init__(self, directory: Path, on_segment: Callable[[str, int, int | None], None]) -> None:
        self._directory = directory
        self._on_segment = on_segment
        self._buffer = bytearray()
        self._init = bytearray()
        self._fragment = bytearray()
        self._moof: bytes | None = None
        self.count = 0
        self.bytes = 0

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
                self._store(INIT, bytes(self._init))
        elif kind in (b"styp", b"sidx", b"moof"):
            self._fragment += box
            if kind == b"moof":
                self._moof = box
        elif kind == b"mdat":
            self._fragment += box
            self.count += 1
            name = segment_name(self.count)
            data = bytes(self._fragment)
            self._store(name, data)
            start = _fragment_start(self._moof) if self._moof is not None else None
            self._fragment.clear()
            self._moof = None
            self._on_segment(name, len(data), start)

    def _store(self, name: str, data: bytes) -> None:
        path = self._directory / name
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        self.bytes += len(data)

    def flush(self) -> None:
        """Segments are written whole in ``write``; nothing is held for the muxer's flushes."""

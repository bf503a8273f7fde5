"""Relayed frames into fragmented MP4 with PyAV, without decoding: what the recorder and live HLS share.

Video is track 1, Opus audio track 2, in one file: both tracks share one timeline and one HLS
rendition (no separate audio playlist to keep in step with the video one). Each H264 access unit
goes into the file as it came (its NAL units length-prefixed, as MP4 stores them), SPS and PPS in
the sample entry as well as in band. A frame's duration is known only when the next frame of its
kind arrives, so each kind holds one frame back. Where fragments are cut is the caller's choice
(``fragment_options``). The muxer runs on the caller's thread: never the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from engine.recording.h264 import parameter_sets
from engine.recording.templates import AUDIO_RATE, h264_source, opus_source

VIDEO_RATE = 90000


def fragment_options(min_seconds: float, every_frame: bool = False) -> dict[str, str]:
    """Options of FFmpeg's mov muxer: a fragment at each keyframe at least ``min_seconds`` after the
    previous cut, or (``every_frame``) one per frame, for a caller that groups fragments itself.

    One per frame is a ``frag_duration`` of 1 µs, which cuts *before* each packet, once that packet
    has given the held sample of its track its duration. FFmpeg's ``frag_every_frame`` cuts *after*
    each packet instead: when two packets of a track come in a row (two 20 ms Opus frames between
    two video frames), the first is written lasting 0 and the second at the same decode time, and
    Chromium's Media Source Extensions then buffer nothing more of the stream."""
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof",
               "min_frag_duration": str(int(min_seconds * 1_000_000))}
    if every_frame:
        options["frag_duration"] = "1"
    return options


class MediaClock:
    """Maps one kind's room timestamps onto a stream's clock (ticks since the stream's start).

    Each kind is anchored on its first frame's arrival (``elapsed`` seconds after the start), which
    keeps audio and video in step, also after ``rebase`` when a publisher comes back after a gap."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.offset: int | None = None
        self.last = -1

    def map(self, timestamp: int, elapsed: float) -> int:
        if self.offset is None:
            self.offset = round(elapsed * self.rate) - timestamp
        mapped = max(timestamp + self.offset, self.last + 1)
        self.last = mapped
        return mapped

    def rebase(self) -> None:
        self.offset = None


@dataclass
class _Held:
    """A frame kept until the next of its kind arrives, which gives its duration."""

    data: bytes
    ts: int
    keyframe: bool


def has_opus(codecs: dict[str, str]) -> bool:
    """Whether a room's codecs (as its media service names them) carry an Opus track the muxer can add."""
    return codecs.get("audio", "").lower() == "opus"


class Fmp4Muxer:
    """One fragmented MP4 stream written to ``sink`` (a write-only file object, e.g. a ``FragmentSplitter``).

    ``keyframe`` is the stream's first video frame (Annex B, with SPS and PPS); ``audio`` adds the
    Opus track. Raises ValueError when the keyframe cannot describe the video track."""

    def __init__(self, sink: Any, keyframe: bytes, audio: bool, options: dict[str, str]) -> None:
        if parameter_sets(keyframe) is None:
            raise ValueError("the first keyframe carries no SPS and PPS")
        container = av.open(sink, "w", format="mp4", options=options)
        # Streams copied from templates (engine/recording/templates.py): no codec is ever opened.
        with h264_source(keyframe) as source:
            video = container.add_stream_from_template(source.streams.video[0])
        video.time_base = Fraction(1, VIDEO_RATE)
        self._streams: dict[str, Any] = {"video": video}
        if audio:
            with opus_source() as source:
                track = container.add_stream_from_template(source.streams.audio[0])
            track.time_base = Fraction(1, AUDIO_RATE)
            self._streams["audio"] = track
        self._container = container
        self._held: dict[str, _Held] = {}
        self._last_duration = {"video": VIDEO_RATE // 30, "audio": AUDIO_RATE // 50}
        #: Decode time just past the last video frame muxed.
        self.video_end = 0

    def add(self, kind: str, data: bytes, ts: int, keyframe: bool) -> None:
        """One frame, ``ts`` on the stream's clock of its kind; the previous one of its kind is muxed."""
        if kind not in self._streams:
            return
        held = self._held.get(kind)
        if held is not None:
            if ts <= held.ts:
                ts = held.ts + 1  # decode times must rise, whatever the publisher sent
            self._mux(kind, held, ts - held.ts)
        self._held[kind] = _Held(data, ts, keyframe)

    def _mux(self, kind: str, held: _Held, duration: int) -> None:
        packet = av.Packet(held.data)
        packet.stream = self._streams[kind]
        packet.time_base = packet.stream.time_base
        packet.pts = packet.dts = held.ts
        packet.duration = duration
        packet.is_keyframe = held.keyframe or kind == "audio"
        self._last_duration[kind] = duration
        if kind == "video":
            self.video_end = held.ts + duration
        self._container.mux(packet)

    def close(self) -> None:
        """Mux the held frames (each lasting as long as the one before it) and write the last fragment."""
        for kind, held in sorted(self._held.items()):
            self._mux(kind, held, self._last_duration[kind])
        self._held.clear()
        self._container.close()

    def abandon(self) -> None:
        """Close after a failure: what is held is dropped, errors are the caller's to report already."""
        self._held.clear()
        self._container.close()

"""What the relay tells listeners beside its viewers (the recorder): sources and whole frames.

A tap sees each publisher start and end and every frame as the relay received it, once
assembled (an H264 access unit in Annex B, an Opus packet), on the room's timeline. Taps run
on the event loop inside the relay's frame handler, so they must only hand the frame on.
"""

from __future__ import annotations

from typing import Protocol

from engine.media.frames import EncodedFrame


class FrameTap(Protocol):
    """A listener on every room's media (engine/recording/service.py is one)."""

    def source_started(self, room: str, codecs: dict[str, str]) -> None:
        """A publisher began sending ``codecs`` (kind -> codec name) to ``room``."""

    def frame(self, room: str, frame: EncodedFrame) -> None:
        """One whole frame (``keyframe`` already set for video); never blocks."""

    def source_ended(self, room: str) -> None:
        """The room's publisher left."""

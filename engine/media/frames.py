"""Encoded frames as the relay sees them, and the per-room keyframe cache.

The relay never decodes, so the only things it learns from a payload are the
ones it needs to start a viewer cleanly: whether a video frame is a keyframe
(H264: an IDR or SPS NAL unit; VP8: the inverse key-frame bit of the payload
header) and, for VP8 keyframes, the picture size.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(slots=True)
class EncodedFrame:
    """One encoded audio or video frame on the room's timeline.

    ``timestamp`` is in ``time_base`` units (RTP clock), continuous across
    publisher changes so viewers' decoders see time moving forward.
    The fast forwarding path packetizes each frame once for the whole room:
    ``packets`` are its RTP payloads, numbered from ``first_index`` in the
    room's packet history (engine/media/fanout.py), ``payload_bytes`` their sum.
    """

    kind: str
    codec: str
    data: bytes
    timestamp: int
    time_base: Fraction
    keyframe: bool = False
    size: tuple[int, int] | None = field(default=None)
    packets: list[bytes] | None = field(default=None)
    first_index: int = 0
    payload_bytes: int = 0


def h264_is_keyframe(data: bytes) -> bool:
    """Annex B access unit (aiortc's depayloader output) containing an IDR or SPS."""
    start = 0
    while True:
        start = data.find(b"\x00\x00\x01", start)
        if start < 0 or start + 3 >= len(data):
            return False
        if data[start + 3] & 0x1F in (5, 7):
            return True
        start += 3


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) if ``data`` is a VP8 keyframe (RFC 6386 section 9.1), else None."""
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return width, height


class KeyframeCache:
    """The latest group of video frames that starts with a keyframe.

    Bounded in frames and bytes; a group that outgrows either bound is
    dropped whole (a partial group cannot start a decoder).
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._frames: deque[EncodedFrame] = deque()
        self._bytes = 0

    def add(self, frame: EncodedFrame) -> None:
        if frame.keyframe:
            self.clear()
        elif not self._frames:
            return
        self._frames.append(frame)
        self._bytes += len(frame.data)
        if len(self._frames) > self._max_frames or self._bytes > self._max_bytes:
            self.clear()

    def clear(self) -> None:
        self._frames.clear()
        self._bytes = 0

    def frames(self) -> list[EncodedFrame]:
        return list(self._frames)

    def __bool__(self) -> bool:
        return bool(self._frames)

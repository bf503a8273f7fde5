"""The forwarding path: from a room's encoded frames to one viewer's connection.

A room only talks to a viewer through ``ViewerOutput`` (``start``, ``push``,
``resync``, ``close``), which has two implementations: ``FastOutput``
(engine/media/fastpath.py, the default) and, here, ``StockOutput``
(``MediaConfig.forwarding == "stock"``), which feeds stock aiortc ``RTCRtpSender``s from
``av.Packet`` tracks: aiortc packetizes each frame per viewer, keeps a
128-packet history per sender to answer NACKs, and sends RTCP sender reports.

Each viewer track has a bounded queue, so a slow viewer never holds up the
room: when its video queue is full the queue is emptied and refilled from the
next keyframe (the viewer asks the room for one), and audio drops its oldest
frame. A late joiner's first frames are the room's cached group of pictures,
with timestamps packed just before the live edge so the decoder catches up
at once instead of playing the group back in real time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from prometheus_client import Counter

from engine.media import aiortc_compat
from engine.media.budgets import RetransmitBudget
from engine.media.frames import EncodedFrame


class ViewerOutput(Protocol):
    """What a room needs from the sending side of one viewer."""

    def start(self, frames: list[EncodedFrame]) -> None:
        """Begin with the room's cached group of pictures (possibly empty)."""

    def push(self, frame: EncodedFrame) -> None:
        """Queue a live frame; never blocks, drops when the viewer is behind."""

    def resync(self) -> None:
        """The publisher changed: drop queued video and wait for a keyframe."""

    def close(self) -> None:
        """Stop sending."""

    def ice_restarted(self) -> None:
        """The viewer's ICE moved to a new socket pair (RFC 9725 restart); the SRTP session is the same."""


def add_sender(pc: RTCPeerConnection, track: MediaStreamTrack | str, kind: str, codec: str) -> RTCRtpSender:
    """A send-only transceiver offering just the room's codec (and RTX), so the viewer negotiates it."""
    transceiver = pc.addTransceiver(track, direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    preferred = [c for c in capabilities if c.name.lower() == codec.lower()]
    rtx = [c for c in capabilities if c.name == "rtx"]
    transceiver.setCodecPreferences(preferred + rtx)
    return transceiver.sender


class ViewerCounters:
    """Per-room metric children, bound once so the hot path only calls ``inc``."""

    def __init__(self, frames_out: Counter, bytes_out: Counter, dropped: Counter, room: str) -> None:
        self.frames_out = {k: frames_out.labels(room, k) for k in ("audio", "video")}
        self.bytes_out = {k: bytes_out.labels(room, k) for k in ("audio", "video")}
        self.dropped = {k: dropped.labels(room, k) for k in ("audio", "video")}


class FrameQueue:
    """One viewer track's bounded queue of ``(frame, rtp timestamp)``, shared by both forwarding paths.

    Video that overflows the queue is dropped until the next keyframe (the
    viewer is behind: ``on_behind`` asks the room for a keyframe); audio
    drops its oldest frame.
    """

    def __init__(self, kind: str, limit: int, counters: ViewerCounters, on_behind: Callable[[], None]) -> None:
        self.kind = kind
        self._limit = limit
        self._counters = counters
        self._on_behind = on_behind
        self.frames: deque[tuple[EncodedFrame, int]] = deque()
        self.need_keyframe = kind == "video"

    def enqueue(self, frame: EncodedFrame, pts: int) -> bool:
        """Queue ``frame``; False if it was dropped."""
        if self.need_keyframe and not frame.keyframe:
            return False
        if len(self.frames) >= self._limit:
            if self.kind == "video":
                self.drop_until_keyframe()
                if not frame.keyframe:
                    return False
            else:
                self.frames.popleft()
                self._counters.dropped["audio"].inc()
        self.need_keyframe = False
        self.frames.append((frame, pts))
        return True

    def drop_until_keyframe(self) -> None:
        """The viewer fell behind: drop queued video and wait for the next keyframe."""
        self._counters.dropped[self.kind].inc(len(self.frames))
        self.frames.clear()
        self.need_keyframe = True
        self._on_behind()

    def resync(self) -> None:
        if self.kind == "video":
            self.frames.clear()
            self.need_keyframe = True

    def __len__(self) -> int:
        return len(self.frames)


class RelayTrack(MediaStreamTrack):
    """A track whose frames are encoded ``av.Packet``s taken from a bounded queue."""

    def __init__(
        self,
        kind: str,
        limit: int,
        counters: ViewerCounters,
        on_behind: Callable[[], None],
        on_first_frame: Callable[[], None],
    ) -> None:
        super().__init__()
        self.kind = kind
        self._counters = counters
        self._on_first_frame = on_first_frame
        self._queue = FrameQueue(kind, limit, counters, on_behind)
        self._waiter: asyncio.Future[None] | None = None
        self._sent_first = False

    def enqueue(self, frame: EncodedFrame, pts: int) -> None:
        if self._queue.enqueue(frame, pts) and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def resync(self) -> None:
        self._queue.resync()

    async def recv(self) -> av.Packet:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frame, pts = self._queue.frames.popleft()
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = frame.time_base
        self._counters.frames_out[self.kind].inc()
        self._counters.bytes_out[self.kind].inc(len(frame.data))
        if not self._sent_first and self.kind == "video":
            self._sent_first = True
            self._on_first_frame()
        return packet

    def stop(self) -> None:
        super().stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StockOutput:
    """``ViewerOutput`` on stock aiortc senders (one ``RelayTrack`` per kind)."""

    def __init__(
        self,
        codecs: dict[str, str],
        limit: int,
        counters: ViewerCounters,
        on_keyframe_request: Callable[[], None],
        on_nack: Callable[[int], None],
        on_first_frame: Callable[[], None],
        retransmit_budget: RetransmitBudget | None = None,
    ) -> None:
        self._codecs = codecs
        self._on_keyframe_request = on_keyframe_request
        self._on_nack = on_nack
        self._retransmit_budget = retransmit_budget  # None: aiortc answers every NACK
        self.tracks = {
            kind: RelayTrack(kind, limit, counters, on_keyframe_request, on_first_frame) for kind in codecs
        }
        self._senders: dict[str, RTCRtpSender] = {}

    def add_to(self, pc: RTCPeerConnection) -> None:
        """Before ``setRemoteDescription``: one send-only transceiver per kind, one codec each."""
        for kind, track in self.tracks.items():
            self._senders[kind] = add_sender(pc, track, kind, self._codecs[kind])

    def bind(self) -> None:
        """After ``setRemoteDescription``: senders packetize only and report feedback."""
        for kind, sender in self._senders.items():
            aiortc_compat.tap_sender(
                sender, self._codecs[kind], self._on_keyframe_request, self._on_nack, self._retransmit_budget
            )

    def start(self, frames: list[EncodedFrame]) -> None:
        video = self.tracks.get("video")
        if video is None or not frames:
            return
        edge = frames[-1].timestamp
        for index, frame in enumerate(frames):
            video.enqueue(frame, edge - (len(frames) - 1 - index))

    def push(self, frame: EncodedFrame) -> None:
        track = self.tracks.get(frame.kind)
        if track is not None:
            track.enqueue(frame, frame.timestamp)

    def resync(self) -> None:
        for track in self.tracks.values():
            track.resync()

    def ice_restarted(self) -> None:
        """Nothing to do: aiortc's senders write through the ICE transport, which follows the restart."""

    def close(self) -> None:
        for track in self.tracks.values():
            track.stop()

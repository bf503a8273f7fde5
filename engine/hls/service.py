"""Live Low-Latency HLS of this node's rooms: a ``FrameTap`` that segments a room only while it is wanted.

A room is segmented only while someone requested its HLS within ``idle_seconds`` (a recorded room
is not segmented for nobody: the recorder muxes its own files, and an idle room costs nothing). The
first request for a room starts the segmenter (and asks the publisher for a keyframe); the
stream starts at the next keyframe. On a node that is not the room's origin, a request also asks
the media cascade to pull the room (``want``), so any node serves any room's HLS from its own pull.
Each stream has a random id in its file names: a stream started again after an idle spell never
reuses a name a cache may still hold.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.hls import metrics
from engine.hls.segmenter import LiveSegmenter
from engine.hls.window import LiveWindow
from engine.media.frames import EncodedFrame
from engine.recording.muxer import VIDEO_RATE, MediaClock, has_opus
from engine.recording.templates import AUDIO_RATE
from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HlsConfig:
    """Live HLS settings (engine/config.py fills them from the ``--hls-*`` flags)."""

    #: EXT-X-PART-INF PART-TARGET: no part is longer; all but a segment's last are at least 85 % of it.
    part_seconds: float = 0.5
    #: Segments are cut at the first keyframe at least 90 % of this after the previous cut.
    segment_seconds: float = 2.0
    #: Complete segments kept in memory per room (and listed in its playlist); older ones are dropped.
    window_segments: int = 12
    #: Seconds a blocking playlist reload or a preload-hinted part waits, at most (then 503).
    block_timeout: float = 6.0
    #: Requests of this node waiting at once (blocking reloads, hinted parts, first playlists); then 503.
    max_blocked: int = 2000
    #: Seconds a room's segmenter runs after its last HLS request.
    idle_seconds: float = 60.0
    #: Frames queued for one room's segmenter thread; past it the stream stops and starts again.
    queue_frames: int = 600
    #: Rooms segmented at once on this node; a request for one more is answered 503.
    max_rooms: int = 100

    def __post_init__(self) -> None:
        if not 0.1 <= self.part_seconds <= self.segment_seconds / 2:
            raise ValueError("--hls-part must be at least 0.1 s and at most half of --hls-segment")
        if self.window_segments < 2 or self.block_timeout <= 0 or self.max_blocked < 1 or self.idle_seconds <= 0 \
                or self.queue_frames < 10 or self.max_rooms < 1:
            raise ValueError("--hls-window must be at least 2, --hls-queue at least 10, and --hls-block-timeout, "
                             "--hls-max-blocked, --hls-idle and --hls-max-rooms positive")


class HlsBusy(Exception):
    """This node segments ``max_rooms`` rooms already."""


class _Live:
    """One room's stream: its window on the loop, its thread, its clocks."""

    def __init__(self, room: str, config: HlsConfig, codecs: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self.stream = secrets.token_hex(4)
        self.window = LiveWindow(config.window_segments, config.segment_seconds)
        self.started = time.monotonic()
        self.clocks = {"video": MediaClock(VIDEO_RATE), "audio": MediaClock(AUDIO_RATE)}
        self.last_keyframe = self.started  # monotonic time of the last video keyframe offered

        def on_init(number: int, data: bytes) -> None:
            loop.call_soon_threadsafe(self.window.add_init, number, data)

        def on_part(*part: Any) -> None:
            loop.call_soon_threadsafe(self.window.add_part, *part)

        def on_end() -> None:
            loop.call_soon_threadsafe(self.window.end)

        self.segmenter = LiveSegmenter(room, config.part_seconds, config.segment_seconds, config.queue_frames,
                                       time.time(), on_init, on_part, on_end)
        self.segmenter.new_source(has_opus(codecs))


class HlsService:
    """The live HLS segmenters of this node (a ``FrameTap``) and what requests wait on."""

    def __init__(self, config: HlsConfig, codecs: Callable[[str], dict[str, str]],
                 keyframe: Callable[[str], None]) -> None:
        """``codecs(room)``: the codecs of the room's source on this node ({} without one); ``keyframe(room)``
        asks that source for a keyframe."""
        self.config = config
        self._codecs = codecs
        self._keyframe = keyframe
        self._live: dict[str, _Live] = {}
        self._requested: dict[str, float] = {}  # room -> monotonic time of its last HLS request
        # Resolved (and replaced) whenever a stream begins: first requests wait on it, then look again.
        self._begun: asyncio.Future[None] | None = None
        self.blocked = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        for room in list(self._live):
            self._drop(room)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the tap ---

    def source_started(self, room: str, codecs: dict[str, str]) -> None:
        live = self._live.get(room)
        if live is not None:
            for clock in live.clocks.values():
                clock.rebase()
            if not live.segmenter.new_source(has_opus(codecs)):
                self._overflowed(room)
        elif self._wanted(room):
            self._begin(room, codecs)

    def frame(self, room: str, frame: EncodedFrame) -> None:
        live = self._live.get(room)
        if live is None:
            return
        now = time.monotonic()
        if frame.kind == "video":
            if frame.keyframe:
                live.last_keyframe = now
            elif now - live.last_keyframe > self.config.segment_seconds:
                # A segment ends only at a keyframe, and a browser publisher sends one only when
                # asked: ask (the relay limits how often), so segments stay near their target.
                self._keyframe(room)
                if now - live.last_keyframe > self.config.segment_seconds * self.config.window_segments:
                    log.warning("room %s: no keyframe for %.0f s though asked; the live HLS stream starts again",
                                room, now - live.last_keyframe)
                    self._drop(room)  # a segment as long as the whole window: bounded, not grown further
                    return
        ts = live.clocks[frame.kind].map(frame.timestamp, now - live.started)
        if not live.segmenter.offer(frame.kind, frame.data, ts, frame.keyframe):
            self._overflowed(room)

    def source_ended(self, room: str) -> None:
        live = self._live.get(room)
        if live is not None and not live.segmenter.end():
            self._overflowed(room)

    # --- requests ---

    def wanted_rooms(self) -> set[str]:
        """Rooms someone asked for within ``idle_seconds`` (the media cascade keeps pulling them here)."""
        return {room for room in self._requested if self._wanted(room)}

    def touch(self, room: str) -> None:
        """An HLS request for ``room``: keep it segmented; start it if its source is here. Raises HlsBusy."""
        self._requested[room] = time.monotonic()
        codecs = self._codecs(room) if room not in self._live else {}
        if codecs and self._begin(room, codecs) is None and len(self._live) >= self.config.max_rooms:
            raise HlsBusy(f"this node segments {self.config.max_rooms} rooms already (--hls-max-rooms)")

    def stream(self, room: str) -> tuple[str, LiveWindow] | None:
        """(stream id, window) of the room's stream here."""
        live = self._live.get(room)
        return (live.stream, live.window) if live is not None else None

    async def ready(self, room: str, timeout: float) -> tuple[str, LiveWindow] | None:
        """The room's stream once it holds a part, waiting ``timeout`` seconds at most for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            live = self._live.get(room)
            if live is not None and live.window.has_media:
                return live.stream, live.window
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if live is not None:
                await live.window.wait_change(remaining)
                continue
            if self._begun is None:
                self._begun = loop.create_future()
            await asyncio.wait({self._begun}, timeout=remaining)

    # --- streams ---

    def _wanted(self, room: str) -> bool:
        at = self._requested.get(room)
        return at is not None and time.monotonic() - at < self.config.idle_seconds

    def _begin(self, room: str, codecs: dict[str, str]) -> _Live | None:
        if codecs.get("video", "").lower() != "h264" or len(self._live) >= self.config.max_rooms:
            return None  # HLS carries H264 (as recordings do); VP8 rooms are WebRTC only
        live = self._live[room] = _Live(room, self.config, codecs)
        metrics.LIVE_ROOMS.set(len(self._live))
        begun, self._begun = self._begun, None
        if begun is not None:
            begun.set_result(None)
        self._keyframe(room)
        log.info("room %s: live HLS stream %s started", room, live.stream)
        return live

    def _drop(self, room: str) -> None:
        live = self._live.pop(room, None)
        if live is None:
            return
        metrics.LIVE_ROOMS.set(len(self._live))
        metrics.forget(room)
        task = asyncio.ensure_future(asyncio.to_thread(live.segmenter.stop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("room %s: live HLS stream %s stopped", room, live.stream)

    def _overflowed(self, room: str) -> None:
        log.warning("room %s: the live HLS queue is full (%d frames, --hls-queue); the stream starts again",
                    room, self.config.queue_frames)
        self._drop(room)

    async def _sweep_forever(self) -> None:
        """Stop the streams nobody asked for within ``idle_seconds``; forget old requests."""
        while True:
            await asyncio.sleep(min(5.0, self.config.idle_seconds / 4))
            horizon = time.monotonic() - self.config.idle_seconds
            for room in [room for room, at in self._requested.items() if at < horizon]:
                del self._requested[room]
            for room in list(self._live):
                if room not in self._requested:
                    self._drop(room)

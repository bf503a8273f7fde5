"""One room's media: its publisher's frames, its keyframe cache and its viewers.

Pure bookkeeping on the event loop (no I/O but the keyframe request task):
frames come in from the publisher's receivers, get a place on the room's
timeline, update the keyframe cache and go to every viewer's output.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from engine.media import aiortc_compat, metrics
from engine.media.config import MediaConfig
from engine.media.fanout import RoomFanout
from engine.media.forwarding import ViewerCounters, ViewerOutput
from engine.media.frames import EncodedFrame, KeyframeCache, h264_is_keyframe, vp8_keyframe_size
from engine.media.taps import FrameTap


class Timeline:
    """Maps each publisher's timestamps (from 0) onto one continuous room clock.

    When a publisher returns, its first frame lands after the previous one
    by the wall-clock time elapsed, so viewers' jitter buffers see time move
    forward instead of jumping back.
    """

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.time_base = Fraction(1, clock_rate)
        self._offset = 0
        self._last: int | None = None
        self._last_wall = 0.0
        self._rebase = True

    def new_source(self) -> None:
        self._rebase = True

    def map(self, timestamp: int) -> int:
        now = time.monotonic()
        if self._rebase:
            self._rebase = False
            if self._last is not None:
                gap = max(1, int((now - self._last_wall) * self.clock_rate))
                self._offset = self._last + gap - timestamp
        mapped = timestamp + self._offset
        self._last = mapped
        self._last_wall = now
        return mapped


class MediaRoom:
    """Media state of one room; owned by ``MediaService``."""

    def __init__(self, room_id: str, config: MediaConfig) -> None:
        self.id = room_id
        self._config = config
        self.publisher_id: str | None = None
        #: The node this room's media is pulled from when this node is an edge of it (the source is
        #: then a pull, engine/media/cascade.py); None when the publisher is here, or there is none.
        self.upstream: str | None = None
        #: Viewers that are other nodes pulling the room (this node is their origin), a subset of ``viewers``.
        self.edges: set[str] = set()
        self.codecs: dict[str, str] = {}
        self.viewers: dict[str, ViewerOutput] = {}
        #: The codec per kind each viewer negotiated (its sender can carry nothing else).
        self.viewer_codecs: dict[str, dict[str, str]] = {}
        #: When the publisher last sent a frame (or connected): media stopping is seen from here.
        self.last_media = time.monotonic()
        #: Whether viewers were told the room is live (``media.online``) and not told otherwise since.
        self.live = False
        #: Called on the first frame after the room went quiet (``live`` False while a publisher sends).
        self.on_media_resumed: Callable[[], None] | None = None
        self.cache = KeyframeCache(config.keyframe_cache_frames, config.keyframe_cache_bytes)
        self.size: tuple[int, int] | None = None
        self._timelines = {"audio": Timeline(48000), "video": Timeline(90000)}
        self._video_receiver: RTCRtpReceiver | None = None
        self._last_pli = float("-inf")
        self._tasks: set[asyncio.Task[bool]] = set()
        #: Listeners on this room's sources and frames (the recorder), set by ``MediaService``.
        self.taps: list[FrameTap] = []
        self.counters = ViewerCounters(metrics.PACKETS_OUT, metrics.BYTES_OUT, metrics.DROPPED, room_id)
        self._frames_in = {k: metrics.PACKETS_IN.labels(room_id, k) for k in ("audio", "video")}
        self._bytes_in = {k: metrics.BYTES_IN.labels(room_id, k) for k in ("audio", "video")}
        self._keyframe_requests = metrics.KEYFRAME_REQUESTS.labels(room_id)
        self.nacks = metrics.NACKS.labels(room_id)
        #: The fast forwarding path's per-room half (packetize once, history, pacer); None on the stock path.
        self.fanout: RoomFanout | None = None
        if config.forwarding == "fast":
            self.fanout = RoomFanout(
                self.counters,
                metrics.RETRANSMITS.labels(room_id),
                config.nack_history_packets,
                config.send_slice_packets,
            )

    # --- publisher side ---

    def preferred_codecs(self) -> dict[str, list[str]]:
        """Per kind, the codecs this room's viewers negotiated, the most common first.

        A publisher that offers one of them is answered with it, so the viewers
        already connected can take its media as they are.
        """
        counts: dict[str, Counter[str]] = {}
        for codecs in self.viewer_codecs.values():
            for kind, name in codecs.items():
                counts.setdefault(kind, Counter())[name.lower()] += 1
        return {kind: [name for name, _ in counter.most_common()] for kind, counter in counts.items()}

    def begin_source(
        self, publisher_id: str, codecs: dict[str, str], video: RTCRtpReceiver | None
    ) -> dict[str, ViewerOutput]:
        """A new publisher: viewers drop what they hold and wait for its first keyframe.

        Viewers that negotiated another codec than the publisher's can never
        decode its frames: they leave the room here (so not one frame reaches
        them) and are returned, for the caller to end their sessions.
        """
        self.publisher_id = publisher_id
        self.codecs = dict(codecs)
        self._video_receiver = video
        self.cache.clear()
        self.size = None
        self.last_media = time.monotonic()
        for timeline in self._timelines.values():
            timeline.new_source()
        stranded = {
            viewer_id: self.viewers.pop(viewer_id)
            for viewer_id, negotiated in list(self.viewer_codecs.items())
            if not self.can_carry(negotiated)
        }
        for viewer_id in stranded:
            del self.viewer_codecs[viewer_id]
        for output in self.viewers.values():
            output.resync()
        for tap in self.taps:
            tap.source_started(self.id, self.codecs)
        return stranded

    def can_carry(self, negotiated: dict[str, str]) -> bool:
        """Whether a viewer that negotiated ``negotiated`` can take this room's media as it is."""
        return all(
            negotiated.get(kind, name).lower() == name.lower() for kind, name in self.codecs.items()
        )

    def end_source(self, publisher_id: str) -> bool:
        """The publisher left; False if ``publisher_id`` was already replaced."""
        if self.publisher_id != publisher_id:
            return False
        self.publisher_id = None
        self._video_receiver = None
        self.cache.clear()
        self.live = False
        for tap in self.taps:
            tap.source_ended(self.id)
        return True

    def frame_handler(
        self, publisher_id: str, kind: str
    ) -> Callable[[RTCRtpCodecParameters, JitterFrame], None]:
        """The callback for one publisher receiver; frames of a replaced publisher are ignored."""

        def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            if self.publisher_id == publisher_id:
                self.on_frame(kind, codec.name, frame)

        return on_frame

    def on_frame(self, kind: str, codec: str, jitter_frame: JitterFrame) -> None:
        self.last_media = time.monotonic()
        if not self.live and self.on_media_resumed is not None:
            self.on_media_resumed()
        timeline = self._timelines[kind]
        data = jitter_frame.data
        frame = EncodedFrame(kind, codec, data, timeline.map(jitter_frame.timestamp), timeline.time_base)
        self._frames_in[kind].inc()
        self._bytes_in[kind].inc(len(data))
        if self.fanout is not None:
            self.fanout.packetize(frame)
        if kind == "video":
            name = codec.lower()
            if name == "h264":
                frame.keyframe = h264_is_keyframe(data)
            elif name == "vp8":
                frame.size = vp8_keyframe_size(data)
                frame.keyframe = frame.size is not None
                if frame.size:
                    self.size = frame.size
            self.cache.add(frame)
        for tap in self.taps:
            tap.frame(self.id, frame)
        for output in self.viewers.values():
            output.push(frame)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (PLI), at most once per ``pli_min_interval``."""
        receiver = self._video_receiver
        now = time.monotonic()
        if receiver is None or now - self._last_pli < self._config.pli_min_interval:
            return
        self._last_pli = now
        self._keyframe_requests.inc()
        task = asyncio.ensure_future(aiortc_compat.request_keyframe(receiver))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- viewer side ---

    def add_viewer(self, viewer_id: str, output: ViewerOutput, codecs: dict[str, str], edge: bool = False) -> None:
        """Start a viewer (which negotiated ``codecs``) at the cached keyframe, or ask the publisher for one.

        An ``edge`` (another node pulling the room) goes before every viewer in ``viewers``, whose
        order is the order frames are handed out (and, on the fast path, sent): a keyframe is a
        burst of packets per viewer, and an edge last in line would get it only after this node
        sent it to all its own viewers, then make its own audience wait as long again.
        """
        if edge:
            self.edges.add(viewer_id)
            self.viewers = {viewer_id: output, **self.viewers}
        else:
            self.viewers[viewer_id] = output
        self.viewer_codecs[viewer_id] = dict(codecs)
        frames = self.cache.frames()
        output.start(frames)
        if not frames:
            self.request_keyframe()

    def remove_viewer(self, viewer_id: str) -> ViewerOutput | None:
        self.viewer_codecs.pop(viewer_id, None)
        self.edges.discard(viewer_id)
        return self.viewers.pop(viewer_id, None)

    def close(self) -> None:
        """The room has no media left: stop its pacer."""
        if self.fanout is not None:
            self.fanout.close()

    @property
    def audience(self) -> int:
        """Viewers that are people (or players), not other nodes pulling the room."""
        return len(self.viewers) - len(self.edges)

    @property
    def empty(self) -> bool:
        return self.publisher_id is None and not self.viewers

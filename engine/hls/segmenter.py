"""One room's live HLS muxing thread: frames in through a bounded queue, parts out to the loop.

The muxer is the recorder's (engine/recording/muxer.py), so audio and video go into one CMAF
stream exactly as in recordings. It writes one fragment per frame (cut before each packet, so
every sample has its duration: see ``fragment_options``), and ``PartBuilder`` groups them by
the video's clock alone (FFmpeg's own duration cut also fires on audio packets, which made parts
of whatever length): a part ends before a keyframe, or before the video frame that
would take it past the part target. So no part is longer than the part target (RFC 8216bis wants
none longer), and every part but one cut short by a keyframe lasts at least the part target
less one frame interval (RFC 8216bis wants 85 %: met for frames of up to 15 % of the target).
A part starting with a keyframe at least 90 % of the segment target after the segment's start
begins a new segment, so segments are cut at keyframes only, never inside a GOP. One fragment per
frame costs about 100 bytes of ``moof`` per frame (some 3 % of a 2.5 Mbit/s stream). Parts reach
the event loop with ``call_soon_threadsafe``: the window (engine/hls/window.py) lives there.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import av

from engine.hls import metrics
from engine.recording.boxes import FragmentSplitter, track_runs
from engine.recording.muxer import VIDEO_RATE, Fmp4Muxer, fragment_options
from engine.recording.segments import VIDEO_TRACK

log = logging.getLogger(__name__)

#: Queue items that are not frames.
_NEW_SOURCE = "new-source"
_END = "end"

#: (init number, bytes) of a new init segment.
InitSink = Callable[[int, bytes], None]
#: (init number, bytes, duration s, independent, starts a segment, wall-clock start) of a part.
PartSink = Callable[[int, bytes, float, bool, bool, float], None]


class LiveSegmenter:
    """Muxes one room's frames into parts in its own thread; ``offer``, ``new_source``, ``end`` and
    ``stop`` are called on the event loop; ``on_init``, ``on_part`` and ``on_end`` (the stream's last
    part is out) are called in the thread (the caller hops to its loop)."""

    def __init__(self, room: str, part_seconds: float, segment_seconds: float, queue_frames: int,
                 wall_origin: float, on_init: InitSink, on_part: PartSink, on_end: Callable[[], None]) -> None:
        self.room = room
        self._part_ticks = round(part_seconds * VIDEO_RATE)
        self._segment_min = round(segment_seconds * 0.9 * VIDEO_RATE)
        self._wall_origin = wall_origin
        self._on_init = on_init
        self._on_part = on_part
        self._on_end = on_end
        self._queue: queue.Queue[tuple[str, Any, int, bool] | None] = queue.Queue(queue_frames)
        self._muxer: Fmp4Muxer | None = None
        self._builder: PartBuilder | None = None
        self._audio = False
        self._init = 0
        self._segment_ticks = 0  # video ticks in the segment so far
        self._first_video = 0  # the stream clock's time of the init's first keyframe
        self._shift = 0  # what the muxer took off every decode time: the stream clock is the file's plus it
        self._parts = metrics.PARTS.labels(room)
        self._lag = metrics.SEGMENTER_LAG.labels(room)
        self._thread = threading.Thread(target=self._run, name=f"hls:{room}", daemon=True)
        self._thread.start()

    def offer(self, kind: str, data: bytes, ts: int, keyframe: bool) -> bool:
        """Queue a frame (``ts`` on the stream's clock of its kind); False when the queue is full."""
        try:
            self._queue.put_nowait((kind, data, ts, keyframe))
        except queue.Full:
            return False
        return True

    def new_source(self, audio: bool) -> bool:
        """A publisher (re)started: the next keyframe opens a new init segment (a discontinuity)."""
        return self.offer(_NEW_SOURCE, b"", int(audio), False)

    def end(self) -> bool:
        """The source stopped: the last part and segment are completed."""
        return self.offer(_END, b"", 0, False)

    def stop(self) -> None:
        """End the thread (off the loop: it may wait for room in the queue)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()  # nobody reads this stream any more
        self._queue.put(None)
        self._thread.join(10.0)

    # --- the thread ---

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            kind, data, ts, keyframe = item
            try:
                if kind in (_NEW_SOURCE, _END):
                    self._close()
                    self._on_end()
                    self._audio = bool(ts) if kind == _NEW_SOURCE else self._audio
                else:
                    self._frame(kind, data, ts, keyframe)
            except (av.FFmpegError, ValueError) as exc:
                log.warning("room %s: live HLS muxing failed (%s); it starts again at the next keyframe",
                            self.room, exc)
                self._abandon()
                self._on_end()
        self._abandon()

    def _frame(self, kind: str, data: bytes, ts: int, keyframe: bool) -> None:
        if self._muxer is None:
            if kind != "video" or not keyframe:
                return
            self._init += 1
            self._segment_ticks = -1  # the first part begins a segment
            self._first_video = ts
            self._builder = PartBuilder(self._part_ticks, self._part_done)
            splitter = FragmentSplitter(self._init_done, self._builder.add)
            self._muxer = Fmp4Muxer(splitter, data, self._audio, fragment_options(0.0, every_frame=True))
        self._muxer.add(kind, data, ts, keyframe)

    def _close(self) -> None:
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            muxer.close()
        if self._builder is not None:
            self._builder.flush()

    def _abandon(self) -> None:
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            with contextlib.suppress(av.FFmpegError, ValueError, OSError):
                muxer.abandon()

    def _init_done(self, data: bytes) -> None:
        self._on_init(self._init, data)

    def _part_done(self, data: bytes, start: int, duration: int, independent: bool) -> None:
        if self._segment_ticks < 0:
            # FFmpeg starts each file's timeline at 0 (at its earliest frame, audio or video), where the
            # stream clock maps arrival times: without adding that back, EXT-X-PROGRAM-DATE-TIME would
            # be early by the wait for the first keyframe, and players would think they lag further.
            self._shift = self._first_video - start
        new_segment = self._segment_ticks < 0 or (independent and self._segment_ticks >= self._segment_min)
        if new_segment:
            self._segment_ticks = 0
        self._segment_ticks += duration
        wall_start = self._wall_origin + (start + self._shift) / VIDEO_RATE
        self._on_part(self._init, data, duration / VIDEO_RATE, independent, new_segment, wall_start)
        self._parts.inc()
        self._lag.observe(max(0.0, time.time() - (wall_start + duration / VIDEO_RATE)))


class PartBuilder:
    """Groups the muxer's one-frame fragments into parts by the video clock (see the module's text).

    ``on_part(bytes, start, duration, independent)``: start and duration of its video, in ticks."""

    def __init__(self, part_ticks: int, on_part: Callable[[bytes, int, int, bool], None]) -> None:
        self._limit = part_ticks
        self._on_part = on_part
        self._chunks: list[bytes] = []
        self._start: int | None = None
        self._end = 0
        self._independent = False

    def add(self, data: bytes, moof: bytes) -> None:
        """One fragment from the muxer (a ``FragmentSplitter`` callback)."""
        video = track_runs(moof).get(VIDEO_TRACK)
        if video is not None and video.samples and video.start is not None:
            if self._start is not None and (
                    video.starts_with_sync or video.start + video.duration - self._start > self._limit):
                self.flush()
            if self._start is None:
                self._start, self._independent = video.start, video.starts_with_sync
            self._end = video.start + video.duration
        self._chunks.append(data)

    def flush(self) -> None:
        """The part so far is complete (audio after the last picture of a stream is dropped with it)."""
        if self._start is not None:
            self._on_part(b"".join(self._chunks), self._start, self._end - self._start, self._independent)
        self._chunks.clear()
        self._start = None

"""One recording's writer thread: remuxes relayed frames into CMAF files, off the event loop.

The relay hands each frame over through a bounded queue (``offer`` never blocks); this thread
muxes them (engine/recording/muxer.py: H264 track 1, Opus track 2, nothing decoded) into
fragmented MP4, cut at the first keyframe about ``segment_seconds`` after the previous cut.

Files of a recording directory: ``init.mp4``, ``seg-NNNNNN.m4s``, ``recording.json`` (the state,
rewritten atomically after each segment) and ``timeline.json`` (the commerce events).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from engine.recording.muxer import VIDEO_RATE, Fmp4Muxer, fragment_options, has_opus
from engine.recording.segments import INIT, SegmentFiles

log = logging.getLogger(__name__)

#: Seconds the writer thread lets frames gather after it emptied its queue. Woken for each frame
#: (some 80 a second), the thread's wake-ups and handing the interpreter back and forth cost a room
#: several times the remux itself; in batches of this many seconds, a small part of it. A queue half
#: full (``queue_frames``), or the end asked, ends the pause early.
GATHER_SECONDS = 0.2

META = "recording.json"
TIMELINE = "timeline.json"


def write_json(path: Path, value: Any) -> None:
    """Replace ``path`` atomically: a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        json.dump(value, file, separators=(",", ":"))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


@dataclass
class RecordingInfo:
    """What the writer knows of its recording, as stored in ``recording.json``."""

    id: str
    room: str
    started_at: float
    codecs: dict[str, str]
    state: str = "recording"
    reason: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    bytes: int = 0
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A copy (the writer thread goes on changing this object while the loop reads it)."""
        return {"id": self.id, "room": self.room, "started_at": self.started_at, "codecs": dict(self.codecs),
                "state": self.state, "reason": self.reason, "segments": [dict(s) for s in self.segments],
                "bytes": self.bytes,
                "duration": round(self.duration, 6)}


class RecordingWriter:
    """Remuxes one recording in its own thread; ``offer`` and ``finish`` are called on the event loop.

    ``on_failed(reason)`` is called from the writer thread when writing fails (the caller hops
    back to its loop); the queue then stops filling and the live stream is not affected.
    """

    def __init__(self, info: RecordingInfo, directory: Path, queue_frames: int, segment_seconds: float,
                 on_failed: Callable[[str], None]) -> None:
        self.info = info
        self.directory = directory
        self._segment_seconds = segment_seconds
        self._on_failed = on_failed
        self._queue: queue.Queue[tuple[str, Any, int, bool] | None] = queue.Queue(queue_frames)
        self._failed = threading.Event()
        self._wake = threading.Event()  # ends the thread's pause: the queue is half full, or the end is asked
        self._wake_at = max(1, queue_frames // 2)
        self._ending = False  # ``finish`` or ``abort`` was called: no more pauses
        self._abort: str | None = None  # set on the loop, acted on by the thread
        self._muxer: Fmp4Muxer | None = None
        self._files: SegmentFiles | None = None
        self._starts: list[int] = []  # video decode time of each segment's first frame
        self._video_end = 0  # decode time just past the last video frame muxed
        self.timeline: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name=f"recording:{info.room}", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self._failed.is_set() or self._abort is not None

    def offer(self, kind: str, data: Any, ts: int = 0, keyframe: bool = False) -> bool:
        """Queue a frame (``kind`` video or audio, ``ts`` in its clock from the recording's start) or a
        timeline ``event``; False when the queue is full (the caller fails the recording)."""
        if self._failed.is_set() or self._abort is not None:
            return True
        try:
            self._queue.put_nowait((kind, data, ts, keyframe))
        except queue.Full:
            return False
        if self._queue.qsize() >= self._wake_at:
            self._wake.set()
        return True

    def abort(self, reason: str) -> None:
        """Stop recording from the loop (its queue overflowed): the thread skips what is queued.

        The state says failed at once: the thread may be stuck in a write for a long time."""
        self._abort = reason
        self.info.state, self.info.reason = "failed", reason
        self._ending = True
        self._wake.set()

    def finish(self) -> None:
        """No more frames: the thread writes the last segment and the final state, then ends.

        Blocks while the queue is full: call it off the event loop. A failed recording's queue
        (full after an overflow, its thread maybe stuck in a write) is emptied first: what is
        queued would be skipped anyway, and the end must not wait for a disk that hangs."""
        if self.failed:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
        self._queue.put(None)
        self._ending = True
        self._wake.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the writer thread ---

    def _run(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=False)
            self._save()
        except OSError as exc:
            self._fail(f"cannot create {self.directory}: {exc.strerror or exc}")
        while True:
            if self._queue.empty() and not self._ending:
                self._wake.wait(GATHER_SECONDS)
                self._wake.clear()
            item = self._queue.get()
            if item is None:
                break
            if self._abort is not None and not self._failed.is_set():
                self._fail(self._abort, notify=False)
            if self._failed.is_set():
                continue
            kind, data, ts, keyframe = item
            try:
                if kind == "event":
                    self.timeline.append(data)
                    write_json(self.directory / TIMELINE, self.timeline)
                else:
                    self._frame(kind, data, ts, keyframe)
            except (OSError, av.FFmpegError, ValueError) as exc:
                # an overflow reported on the loop is the cause of whatever the stalled write did next
                self._fail(self._abort or f"writing {kind} failed: {getattr(exc, 'strerror', None) or exc}",
                           notify=self._abort is None)
        if not self._failed.is_set():
            try:
                self._close()
            except (OSError, av.FFmpegError, ValueError) as exc:
                self._fail(f"closing the recording failed: {getattr(exc, 'strerror', None) or exc}")

    def _fail(self, reason: str, notify: bool = True) -> None:
        if self._failed.is_set():
            return
        self._failed.set()
        self.info.state = "failed"
        self.info.reason = reason
        if notify:  # else the loop reported it
            log.warning("recording %s of room %s stopped: %s (the live stream goes on)",
                        self.info.id, self.info.room, reason)
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            try:
                muxer.abandon()
            except Exception:  # the file system already failed; the state below says so
                log.debug("closing the failed recording's muxer failed", exc_info=True)
        try:
            self._save()
        except OSError:
            log.debug("cannot store the failed state of recording %s", self.info.id, exc_info=True)
        if notify:
            self._on_failed(reason)

    def _frame(self, kind: str, data: bytes, ts: int, keyframe: bool) -> None:
        if self._muxer is None:
            if kind != "video" or not keyframe:
                return  # a recording starts on a keyframe; audio before it has no picture
            self._files = SegmentFiles(self.directory, self._segment_done)
            # cut at the first keyframe past ~90% of the target: a 2 s GOP is cut at every keyframe
            self._muxer = Fmp4Muxer(self._files, data, has_opus(self.info.codecs),
                                    fragment_options(self._segment_seconds * 0.9))
        self._muxer.add(kind, data, ts, keyframe)

    def _close(self) -> None:
        muxer = self._muxer
        if muxer is not None:
            muxer.close()  # the last fragment
            self._video_end = muxer.video_end
            self._muxer = None
        self.info.state = "complete"
        self._settle()
        self._save()

    def _segment_done(self, name: str, size: int, start: int | None) -> None:
        """A media segment is on disk: the stored state lists it (durations of all but the last known)."""
        if self._muxer is not None:
            self._video_end = self._muxer.video_end
        self._starts.append(start if start is not None else self._video_end)
        self.info.segments.append({"file": name, "bytes": size, "duration": None})
        self._settle()
        self._save()

    def _settle(self) -> None:
        """Segment durations from consecutive start times; the last runs to the end of the video."""
        for index, segment in enumerate(self.info.segments):
            end = self._starts[index + 1] if index + 1 < len(self._starts) else None
            if end is None and self.info.state != "recording":
                end = self._video_end
            if end is not None:
                segment["duration"] = round((end - self._starts[index]) / VIDEO_RATE, 6)
        done = [s["duration"] for s in self.info.segments if s["duration"] is not None]
        self.info.duration = sum(done)
        self.info.bytes = (self._files.bytes if self._files is not None else 0)

    def _save(self) -> None:
        info = self.info.to_dict()
        info["saved_at"] = time.time()
        write_json(self.directory / META, info)


__all__ = ["INIT", "META", "TIMELINE", "RecordingInfo", "RecordingWriter"]

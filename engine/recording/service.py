"""Records every broadcast of every room on this node, and keeps each recording's commerce timeline.

A ``FrameTap`` on the relay (engine/media/taps.py): a broadcast starts at the first H264 keyframe
after a publisher starts and ends ``rejoin_seconds`` after its publisher left without one coming
back; a publisher that returns sooner continues the same recording, its frames placed after the
gap by the wall clock (each kind anchored on its first frame's arrival, which keeps audio and
video in step across the gap). VP8 is not recorded (CMAF for HLS carries H264): the room gets
``recording.failed`` with that reason. While a recording runs the service listens to its room
on the bus and keeps every commerce event viewers saw with its media time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.bus.base import Event
from engine.media.frames import EncodedFrame
from engine.recording.muxer import VIDEO_RATE, MediaClock
from engine.recording.segments import INIT
from engine.recording.templates import AUDIO_RATE
from engine.recording.writer import META, TIMELINE, RecordingInfo, RecordingWriter
from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Room events a replay shows, kept in each recording's timeline.
TIMELINE_TYPES = frozenset({"tag.pinned", "tag.unpinned", "sale.started", "sale.ended", "sale.sold_out"})
RECORDING_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")
ROOM_DIR = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SEGMENT_FILE = re.compile(r"init\.mp4|seg-[0-9]{6}\.m4s")


class RoomBus(Protocol):
    """What the recorder needs from ``engine.bus.base.Bus``."""

    async def publish(self, room: str, type: str, data: dict) -> Any: ...

    def subscribe(self, room: str, listener: Any) -> None: ...

    def unsubscribe(self, room: str, listener: Any) -> None: ...


@dataclass(frozen=True)
class RecordingConfig:
    """Where recordings go and how much of them is kept (engine/config.py fills it from flags)."""

    directory: Path
    #: Frames (and timeline events) queued for one recording's writer; past it the recording fails.
    queue_frames: int = 2000
    #: A segment is cut at the first keyframe about this many seconds after the previous cut.
    segment_seconds: float = 2.0
    #: Seconds a broadcast waits for its publisher to come back before its recording ends.
    rejoin_seconds: float = 30.0
    #: Total bytes of finished recordings kept (0: no bound); the oldest go first.
    max_bytes: int = 0
    #: Seconds a finished recording is kept after it ended (0: no bound).
    max_age: float = 0.0
    #: Seconds between retention sweeps (one also runs whenever a recording ends).
    sweep_seconds: float = 60.0


class _Broadcast:
    """A recording in progress: its writer, clocks, and its listener on the room's events."""

    def __init__(self, service: RecordingService, room: str, writer: RecordingWriter) -> None:
        self.service = service
        self.room = room
        self.writer = writer
        self.started = time.monotonic()
        self.clocks = {"video": MediaClock(VIDEO_RATE), "audio": MediaClock(AUDIO_RATE)}
        self.ending: asyncio.TimerHandle | None = None

    def rebase(self) -> None:
        for clock in self.clocks.values():
            clock.rebase()

    @property
    def media_time(self) -> float:
        """Seconds of the video frame live now, on the recording's clock."""
        return max(self.clocks["video"].last, 0) / VIDEO_RATE

    def on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.type not in TIMELINE_TYPES:
                continue
            media_ts = self.media_time
            if event.type == "tag.pinned" and isinstance(event.data.get("media_ts"), (int, float)):
                media_ts = float(event.data["media_ts"])  # the host's own frame wins
            entry = {"type": event.type, "media_ts": round(media_ts, 3), "seq": event.seq,
                     "ts": round(event.ts, 3), "data": event.data}
            if not self.writer.offer("event", entry):
                self.service.overflowed(self)

    def on_direct(self, user: str, message: dict[str, Any]) -> None:
        """Messages to one user are not part of what every viewer saw."""

    def on_reset(self) -> None:
        """Lost events cannot be placed on the media clock after the fact; the timeline goes on."""


class RecordingService:
    """The recorder of this node (a ``FrameTap``) and the store of its recordings on disk."""

    def __init__(self, config: RecordingConfig, bus: RoomBus,
                 wanted: Callable[[str], bool] = lambda room: True) -> None:
        """``wanted(room)``: whether the room's broadcasts are recorded (its setting), asked when one starts."""
        self.config = config
        self._bus = bus
        self._wanted = wanted
        self._active: dict[str, _Broadcast] = {}
        #: Recordings that ended, by (room, id), until their writer has written them whole: read from
        #: the writer, as their files on disk still say "recording" (which a listing takes for a
        #: recording whose server stopped mid-way, so complete).
        self._finishing: dict[tuple[str, str], RecordingWriter] = {}
        self._codecs: dict[str, dict[str, str]] = {}  # rooms whose publisher started, not recorded yet
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        #: Told when recordings were added, ended or deleted (the shared index republishes).
        self.on_change: Callable[[], None] = lambda: None
        # Every kept recording not in progress when it was read, newest first (``_kept``): read from
        # disk once after each change rather than at every listing (the lobby polls, and so do an
        # offline room's viewers). One entry per recording on disk, so the retention flags bound it;
        # ``_generation`` counts the changes, so a walk that a change overtook is not kept.
        self._kept_cache: list[dict[str, Any]] | None = None
        self._generation = 0
        self._kept_lock = threading.Lock()

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        for room in list(self._active):
            await self._end(room)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the tap ---

    def source_started(self, room: str, codecs: dict[str, str]) -> None:
        broadcast = self._active.get(room)
        if broadcast is not None:
            if broadcast.ending is not None:
                broadcast.ending.cancel()
                broadcast.ending = None
            broadcast.rebase()
            return
        if not self._wanted(room):
            log.info("room %s: this broadcast is not recorded (the room's setting)", room)
            return
        video = codecs.get("video", "").lower()
        if video and video != "h264":
            reason = f"{codecs['video']} video is not recorded: recordings are fMP4 for HLS, which carries H264"
            log.warning("room %s: %s", room, reason)
            self._spawn(self._bus.publish(room, "recording.failed", {"recording": None, "reason": reason}))
            return
        if video:
            self._codecs[room] = dict(codecs)

    def frame(self, room: str, frame: EncodedFrame) -> None:
        broadcast = self._active.get(room)
        if broadcast is None:
            if frame.kind != "video" or not frame.keyframe or room not in self._codecs:
                return
            broadcast = self._begin(room, self._codecs.pop(room))
        if broadcast.writer.failed:
            return
        ts = broadcast.clocks[frame.kind].map(frame.timestamp, time.monotonic() - broadcast.started)
        if not broadcast.writer.offer(frame.kind, frame.data, ts, frame.keyframe):
            self.overflowed(broadcast)

    def source_ended(self, room: str) -> None:
        self._codecs.pop(room, None)
        broadcast = self._active.get(room)
        if broadcast is not None and broadcast.ending is None:
            loop = asyncio.get_running_loop()
            broadcast.ending = loop.call_later(self.config.rejoin_seconds, lambda: self._spawn(self._end(room)))

    def overflowed(self, broadcast: _Broadcast) -> None:
        reason = f"the recording queue is full ({self.config.queue_frames} items): the disk is too slow"
        broadcast.writer.abort(reason)
        log.warning("recording %s of room %s stopped: %s (the live stream goes on)",
                    broadcast.writer.info.id, broadcast.room, reason)
        self._failed(broadcast, reason)

    # --- recordings ---

    def _begin(self, room: str, codecs: dict[str, str]) -> _Broadcast:
        now = time.time()
        recording_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)
        info = RecordingInfo(recording_id, room, now, codecs)
        loop = asyncio.get_running_loop()
        holder: list[_Broadcast] = []

        def on_failed(reason: str) -> None:
            loop.call_soon_threadsafe(lambda: self._failed(holder[0], reason))

        writer = RecordingWriter(info, self.config.directory / room / recording_id, self.config.queue_frames,
                                 self.config.segment_seconds, on_failed)
        broadcast = _Broadcast(self, room, writer)
        holder.append(broadcast)
        self._active[room] = broadcast
        self._bus.subscribe(room, broadcast)
        log.info("room %s: recording %s started", room, recording_id)
        self._changed()
        self._spawn(self.sweep())
        return broadcast

    def _failed(self, broadcast: _Broadcast, reason: str) -> None:
        self._spawn(self._bus.publish(broadcast.room, "recording.failed",
                                      {"recording": broadcast.writer.info.id, "reason": reason}))

    async def _end(self, room: str) -> None:
        broadcast = self._active.pop(room, None)
        if broadcast is None:
            return
        finishing = (room, broadcast.writer.info.id)
        self._finishing[finishing] = broadcast.writer
        # the cached catalog left it out while it ran: until it is finished, listings read it from its writer
        self._forget()
        if broadcast.ending is not None:
            broadcast.ending.cancel()
        self._bus.unsubscribe(room, broadcast)
        try:
            await asyncio.to_thread(broadcast.writer.finish)
            await asyncio.to_thread(broadcast.writer.join, 30.0)
        finally:
            del self._finishing[finishing]
        log.info("room %s: recording %s %s", room, broadcast.writer.info.id, broadcast.writer.info.state)
        self._changed()
        await self.sweep()

    def recording(self, room: str) -> str | None:
        """The id of ``room``'s recording in progress."""
        broadcast = self._active.get(room)
        return broadcast.writer.info.id if broadcast is not None else None

    def _directory(self, room: str, recording_id: str) -> Path | None:
        if not ROOM_DIR.fullmatch(room) or not RECORDING_ID.fullmatch(recording_id):
            return None
        path = self.config.directory / room / recording_id
        return path if (path / META).is_file() else None

    def _read(self, path: Path) -> dict[str, Any] | None:
        active = self._active.get(path.parent.name)
        writer = active.writer if active is not None else None
        if writer is None or writer.info.id != path.name:
            writer = self._finishing.get((path.parent.name, path.name))
        if writer is not None:
            # the writer's own state: current, and known even when its directory can no longer be read
            return writer.info.to_dict()
        try:
            info = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        if info.get("state") == "recording":
            info["state"] = "complete"  # its server stopped mid-way: what was flushed is the recording
        return info

    def list(self, room: str) -> list[dict[str, Any]]:
        """``room``'s recordings, newest first, each with its ``room`` and featured products: the kept
        ones from the catalog cached between changes (a room's viewers poll it while it is offline)
        and the one in progress, listed even when its directory failed (blocking: run it off the loop)."""
        running = self.in_progress(room)
        ids = {info["id"] for info in running}
        kept = [info for info in self._kept() if info["room"] == room and info["id"] not in ids]
        return sorted(kept + running, key=newest, reverse=True)

    def recent(self, limit: int, rooms: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The newest finished recordings of every room ``rooms`` accepts, newest first, at most
        ``limit``, each with its ``room`` and featured products (blocking when the recordings changed
        since the last listing: run it off the loop)."""
        found = [info for info in self._kept()
                 if in_lobby(info, rooms) and self.recording(info["room"]) != info["id"]]
        return found[:limit]

    def get(self, room: str, recording_id: str) -> dict[str, Any] | None:
        if ROOM_DIR.fullmatch(room) and self.recording(room) == recording_id:
            return self._active[room].writer.info.to_dict()
        path = self._directory(room, recording_id)
        return None if path is None else self._read(path)

    def timeline(self, room: str, recording_id: str) -> list[dict[str, Any]] | None:
        path = self._directory(room, recording_id)
        if path is None:
            return None
        try:
            return json.loads((path / TIMELINE).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return None

    def file(self, room: str, recording_id: str, name: str) -> Path | None:
        """A segment file of a recording, or None (names are checked: nothing outside the recording)."""
        path = self._directory(room, recording_id)
        if path is None or not SEGMENT_FILE.fullmatch(name) or not (path / name).is_file():
            return None
        return path / name

    def delete(self, room: str, recording_id: str) -> bool:
        """Remove a finished recording; False if there is none. One in progress raises ValueError."""
        if self.recording(room) == recording_id:  # even before its first metadata reached the disk
            raise ValueError("this recording is in progress")
        path = self._directory(room, recording_id)
        if path is None:
            return False
        shutil.rmtree(path, ignore_errors=True)
        self._changed()
        return True

    def catalog(self) -> list[dict[str, Any]]:
        """Every recording kept on this node, each with its ``room`` (blocking when the recordings
        changed since the last listing: run it off the loop)."""
        running = {(room, broadcast.writer.info.id) for room, broadcast in list(self._active.items())}
        return [info for info in self._kept() if (info["room"], info["id"]) not in running] + self.in_progress()

    def _kept(self) -> list[dict[str, Any]]:
        """The recordings kept on disk, not in progress when read, newest first: the cached list, or
        one walk of the recordings directory after a change (blocking)."""
        cached = self._kept_cache
        if cached is not None:
            return cached
        generation = self._generation
        found = []
        for room, path in self._walk():
            info = None if self.recording(room) == path.name else self._read(path)
            if info is not None:
                found.append({**info, "room": room, "featured": featured(self.timeline(room, path.name) or [])})
        found.sort(key=newest, reverse=True)
        with self._kept_lock:
            if generation == self._generation:  # no change while this walk ran
                self._kept_cache = found
        return found

    def _changed(self) -> None:
        """Recordings were added, ended or deleted: the next listing reads the disk again, and the
        shared index republishes."""
        self._forget()
        self.on_change()

    def _forget(self) -> None:
        """Drop the cached catalog (and any walk running now): the next listing reads the disk."""
        with self._kept_lock:
            self._generation += 1
            self._kept_cache = None

    def _walk(self) -> Iterator[tuple[str, Path]]:
        """``(room, directory)`` of every recording directory kept; unreadable directories are skipped."""
        top = self.config.directory
        try:
            rooms = [path.name for path in top.iterdir() if ROOM_DIR.fullmatch(path.name)]
        except OSError:
            rooms = []
        for name in rooms:
            try:
                paths = [path for path in (top / name).iterdir() if RECORDING_ID.fullmatch(path.name)]
            except OSError:
                continue
            for path in paths:
                yield name, path

    def in_progress(self, room: str | None = None) -> list[dict[str, Any]]:
        """The recordings running now (``room``'s alone if given), each with its ``room`` and featured
        products so far (none while its directory cannot be read) (blocking)."""
        return [{**broadcast.writer.info.to_dict(), "room": name,
                 "featured": featured(self.timeline(name, broadcast.writer.info.id) or [])}
                for name, broadcast in list(self._active.items()) if room is None or name == room]

    async def sweep(self) -> None:
        """Enforce the retention bounds (off the loop): oldest finished recordings deleted first."""
        if (self.config.max_bytes or self.config.max_age) and await asyncio.to_thread(self._sweep):
            self._changed()

    def _sweep(self) -> bool:
        """Whether it deleted any recording."""
        recordings = []
        with contextlib.suppress(OSError):
            for room, path in self._walk():
                info = self._read(path)
                if info is not None:
                    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                    ended = info["started_at"] + (info.get("duration") or 0.0)
                    recordings.append((info["started_at"], ended, size, self.recording(room) == path.name, path))
        recordings.sort(key=lambda r: r[0])
        total = sum(r[2] for r in recordings)
        now = time.time()
        deleted = False
        for _, ended, size, active, path in recordings:
            too_old = self.config.max_age and now - ended > self.config.max_age
            too_big = self.config.max_bytes and total > self.config.max_bytes
            if active or not (too_old or too_big):
                continue
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            deleted = True
            log.info("recording %s deleted by retention (%s)", path.name, "age" if too_old else "size")
        return deleted

    async def _sweep_forever(self) -> None:
        """Sweep at start (a server that was down past a recording's age deletes it at once), then
        every ``sweep_seconds``."""
        while True:
            try:
                await self.sweep()
            except OSError:
                log.warning("retention sweep of %s failed", self.config.directory, exc_info=True)
            await asyncio.sleep(self.config.sweep_seconds)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def newest(info: dict[str, Any]) -> tuple[float, str]:
    """The sort key of listings, newest first with ``reverse=True``: recordings that started in the
    same instant keep one order (by id) on every node and at every call."""
    return info["started_at"], info["id"]


def in_lobby(info: dict[str, Any], rooms: Callable[[str], bool]) -> bool:
    """Whether the lobby lists a recording (this node's or another's): finished whole, with some
    media, of a room ``rooms`` accepts (the public ones)."""
    return info["state"] == "complete" and bool(info["duration"]) and rooms(info["room"])


def featured(timeline: list[dict[str, Any]]) -> list[str]:
    """Product ids pinned or put on sale in a timeline, in order of first appearance."""
    products: list[str] = []
    for entry in timeline:
        product = entry.get("data", {}).get("product_id") or entry.get("data", {}).get("product")
        if entry.get("type") in ("tag.pinned", "sale.started") and isinstance(product, str) and product not in products:
            products.append(product)
    return products


__all__ = ["INIT", "RecordingConfig", "RecordingService", "featured", "in_lobby", "newest"]

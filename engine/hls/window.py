"""One room's live HLS stream in memory: init segments, the last segments and their parts, on the event loop.

The segmenter thread (engine/hls/segmenter.py) hands each part over with ``call_soon_threadsafe``;
everything here runs on the loop, so readers need no lock. Parts are numbered by one counter for the
whole stream (not per segment): the part announced by ``EXT-X-PRELOAD-HINT`` has the next number
whether or not a keyframe makes it the first part of a new segment. A segment keeps its parts' bytes
while it grows; once complete they are joined into the segment's bytes, and its parts become slices
of it (one copy in memory). Only ``window`` complete segments are kept: older ones are dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Part:
    """A partial segment: one fragment of the muxer (``moof`` + ``mdat``)."""

    id: int
    duration: float
    independent: bool
    size: int


@dataclass
class Segment:
    """A media segment: parts from a keyframe to the next cut."""

    msn: int
    init: int  #: the init segment its parts need (changes when a new publisher starts: a discontinuity)
    wall_start: float  #: wall-clock time of its first frame (EXT-X-PROGRAM-DATE-TIME)
    parts: list[Part] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)  #: parts' bytes while it grows
    data: bytes = b""  #: the whole segment once complete
    complete: bool = False

    @property
    def duration(self) -> float:
        return sum(part.duration for part in self.parts)

    def part_bytes(self, index: int) -> bytes | memoryview:
        if not self.complete:
            return self.chunks[index]
        offset = sum(part.size for part in self.parts[:index])
        return memoryview(self.data)[offset:offset + self.parts[index].size]


class LiveWindow:
    """The segments a live playlist lists, and waiting for the next part."""

    def __init__(self, window: int, segment_target: float) -> None:
        self.window = window
        self.segments: deque[Segment] = deque()
        self.inits: dict[int, bytes] = {}
        self.next_msn = 0
        self.next_part = 0
        self.discontinuities = 0  #: EXT-X-DISCONTINUITY-SEQUENCE: discontinuities dropped with old segments
        #: EXT-X-TARGETDURATION: never lowered (RFC 8216bis forbids changing it); raised if a GOP is longer.
        self.target = max(1, round(segment_target))
        #: Playlists rendered since the last change, by what varies between requests (delta or not, query):
        #: every player waiting for a part is answered the same bytes, rendered once.
        self.playlists: dict[tuple[bool, str], bytes] = {}
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- fed by the segmenter (on the loop) ---

    def add_init(self, number: int, data: bytes) -> None:
        self.inits[number] = data

    def add_part(self, init: int, data: bytes, duration: float, independent: bool, new_segment: bool,
                 wall_start: float) -> None:
        """A part is complete; ``new_segment`` closes the growing segment first (the part starts at a keyframe)."""
        current = self.segments[-1] if self.segments else None
        if current is not None and not current.complete and (new_segment or current.init != init):
            self._complete(current)
        if current is None or current.complete:
            current = Segment(self.next_msn, init, wall_start)
            self.next_msn += 1
            self.segments.append(current)
        current.parts.append(Part(self.next_part, duration, independent, len(data)))
        current.chunks.append(data)
        self.next_part += 1
        self._trim()
        self._wake()

    def end(self) -> None:
        """The source stopped: its last segment is complete as it is."""
        if self.segments and not self.segments[-1].complete:
            self._complete(self.segments[-1])
            self._wake()

    def _complete(self, segment: Segment) -> None:
        segment.data = b"".join(segment.chunks)
        segment.chunks = []
        segment.complete = True
        self.target = max(self.target, round(segment.duration))

    def _trim(self) -> None:
        complete = sum(1 for segment in self.segments if segment.complete)
        while complete > self.window:
            dropped = self.segments.popleft()
            complete -= 1
            if self.segments and self.segments[0].init != dropped.init:
                self.discontinuities += 1
        wanted = {segment.init for segment in self.segments}
        for number in [n for n in self.inits if n not in wanted and n < max(wanted, default=0)]:
            del self.inits[number]

    def _wake(self) -> None:
        self.playlists.clear()
        self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    # --- read by requests ---

    @property
    def has_media(self) -> bool:
        return bool(self.segments)

    def segment(self, msn: int) -> Segment | None:
        if not self.segments or not self.segments[0].msn <= msn <= self.segments[-1].msn:
            return None
        return self.segments[msn - self.segments[0].msn]

    def part(self, part_id: int) -> tuple[Segment, int] | None:
        """The segment holding part ``part_id`` and the part's index in it, if it is still kept."""
        for segment in reversed(self.segments):
            if segment.parts and segment.parts[0].id <= part_id:
                index = part_id - segment.parts[0].id
                return (segment, index) if index < len(segment.parts) else None
        return None

    def reached(self, msn: int, part: int | None) -> bool:
        """Whether the playlist holds segment ``msn`` complete (``part`` None) or part ``part`` of it.

        A part index past the last part of a complete segment means part 0 of the next one."""
        segment = self.segment(msn)
        if segment is None:
            return bool(self.segments) and msn < self.segments[0].msn
        if part is None:
            return segment.complete
        if part < len(segment.parts):
            return True
        return segment.complete and self.reached(msn + 1, 0)

    async def wait_change(self, timeout: float) -> bool:
        """Wait for the next part (or the end of the source); False after ``timeout`` seconds."""
        done, _ = await asyncio.wait({self._changed}, timeout=timeout)
        return bool(done)

"""The room side of the fast forwarding path: packetize once, keep one history, pace the sends.

Per frame, the work that does not depend on the viewer happens here once:
the frame is split into RTP payloads and numbered in the room's packet
history (per kind, bounded), which answers every viewer's NACKs. The viewers
(``FastOutput``, engine/media/fastpath.py) only rewrite headers, encrypt and
send, and they do it from one pacer task per room rather than from the
publisher's receive callback:

- ``schedule`` puts a viewer with queued frames on a FIFO run queue; the pacer
  sends one frame per kind for it, then moves on, so a keyframe goes out to
  every viewer frame-major (viewer 1, 2, ... N) rather than viewer-major.
- after ``slice_packets`` packets the pacer yields to the event loop, so a
  keyframe burst to hundreds of viewers is spread over several loop turns and
  the publisher's socket, RTCP and websockets are served in between.

Metric counters are summed in plain integers and added to Prometheus once per
slice (a labelled ``inc`` per packet would cost as much as the send).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import NamedTuple, Protocol

from prometheus_client import Counter

from engine.media import rtp
from engine.media.forwarding import ViewerCounters
from engine.media.frames import EncodedFrame

#: Seconds between two RTCP sender reports to a viewer (RFC 3550 suggests 5 s minimum for large
#: sessions; browsers use SRs for audio/video sync, and aiortc sends one every 0.5 to 1.5 s).
REPORT_INTERVAL = 1.0


class HistoryEntry(NamedTuple):
    """One packet of the room's history."""

    index: int
    payload: bytes
    marker: bool
    timestamp: int  # the room's RTP timestamp of the packet's frame
    frame_index: int  # first_index of the packet's frame


class PacketHistory:
    """The room's last ``size`` packets of one kind, by room packet index (a ring)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._slots: list[HistoryEntry | None] = [None] * size

    def add(self, frame: EncodedFrame) -> None:
        slots, size = self._slots, self._size
        index = frame.first_index
        packets = frame.packets or ()
        last = index + len(packets) - 1
        for offset, payload in enumerate(packets):
            i = index + offset
            slots[i % size] = HistoryEntry(i, payload, i == last, frame.timestamp, index)

    def get(self, index: int) -> HistoryEntry | None:
        entry = self._slots[index % self._size]
        return entry if entry is not None and entry.index == index else None


class Paced(Protocol):
    """A viewer the pacer sends for."""

    scheduled: bool

    def flush(self) -> int:
        """Send the next queued frame of each kind; the number of packets sent."""

    def pending(self) -> bool:
        """Whether frames are still queued that can be sent now."""

    def send_reports(self) -> None:
        """Send RTCP sender reports for each stream that has sent media."""


class RoomFanout:
    """One room's packetizer, packet histories, pacer task and sender-report task."""

    def __init__(
        self, counters: ViewerCounters, retransmits: Counter, history_packets: int, slice_packets: int
    ) -> None:
        self.history = {"audio": PacketHistory(history_packets), "video": PacketHistory(history_packets)}
        self._counters = counters
        self._retransmits = retransmits
        self._slice = slice_packets
        self._next_index = {"audio": 0, "video": 0}
        self._picture_id = random.randrange(0x8000)
        self._run: deque[Paced] = deque()
        self._wake = asyncio.Event()
        self._outputs: set[Paced] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.frames = {"audio": 0, "video": 0}
        self.bytes = {"audio": 0, "video": 0}
        self.retransmits = 0

    # --- once per frame ---

    def packetize(self, frame: EncodedFrame) -> None:
        """Split ``frame`` into RTP payloads and give them the room's next packet indices."""
        if frame.kind == "audio":
            payloads = [frame.data]
        elif frame.codec.lower() == "vp8":
            payloads = rtp.packetize_vp8(frame.data, self._picture_id)
            self._picture_id = (self._picture_id + 1) & 0x7FFF
        else:
            payloads = rtp.packetize_h264(frame.data)
        frame.packets = payloads
        frame.payload_bytes = sum(map(len, payloads))
        frame.first_index = self._next_index[frame.kind]
        self._next_index[frame.kind] += len(payloads)
        self.history[frame.kind].add(frame)

    # --- viewers ---

    def attach(self, output: Paced) -> None:
        """A viewer joined: it gets sender reports from now on."""
        self._outputs.add(output)
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._pace()), asyncio.ensure_future(self._report())]

    def detach(self, output: Paced) -> None:
        self._outputs.discard(output)
        if output.scheduled:
            with contextlib.suppress(ValueError):
                self._run.remove(output)
            output.scheduled = False

    def schedule(self, output: Paced) -> None:
        """``output`` has frames to send: run it after the viewers already waiting."""
        if not output.scheduled:
            output.scheduled = True
            self._run.append(output)
            self._wake.set()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self._run.clear()
        self._outputs.clear()

    # --- tasks ---

    async def _pace(self) -> None:
        run = self._run
        while True:
            await self._wake.wait()
            self._wake.clear()
            while run:
                budget = self._slice
                while run and budget > 0:
                    output = run.popleft()
                    budget -= output.flush()
                    if output.pending():
                        run.append(output)
                    else:
                        output.scheduled = False
                self._flush_metrics()
                if run:
                    await asyncio.sleep(0)

    def _flush_metrics(self) -> None:
        counters = self._counters
        for kind in ("audio", "video"):
            if self.frames[kind]:
                counters.frames_out[kind].inc(self.frames[kind])
                counters.bytes_out[kind].inc(self.bytes[kind])
                self.frames[kind] = self.bytes[kind] = 0
        if self.retransmits:
            self._retransmits.inc(self.retransmits)
            self.retransmits = 0

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            for output in list(self._outputs):
                output.send_reports()
            self._flush_metrics()

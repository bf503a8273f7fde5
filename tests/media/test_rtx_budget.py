"""Retransmission budget: crafted NACKs from a real viewer cannot turn the relay into an amplifier."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc.sdp import SessionDescription
from media_peers import Publisher, Viewer

from engine.media.budgets import RetransmitBudget
from engine.media.config import MediaConfig

H264_OPUS = {"video": "H264", "audio": "opus"}
#: Sequence numbers one NACK names in the attack (a full NACK item: one PID and its 16-bit mask).
BURST = 17


def test_each_packet_is_resent_a_bounded_number_of_times():
    now = [0.0]
    budget = RetransmitBudget(rate=1000, per_packet=2, clock=lambda: now[0])
    lost = list(range(100, 100 + BURST))
    assert budget.allow("video", lost) == lost
    assert budget.allow("video", lost + lost) == lost  # a repeat within one NACK counts as asked again
    for _ in range(50):
        now[0] += 1.0
        assert budget.allow("video", lost) == []
    assert budget.allow("audio", lost) == lost  # per stream
    assert budget.refused == BURST + 50 * BURST


def test_retransmissions_per_second_are_bounded():
    now = [0.0]
    budget = RetransmitBudget(rate=20, per_packet=1000, clock=lambda: now[0])
    assert len(budget.allow("video", list(range(BURST)))) == BURST
    assert len(budget.allow("video", list(range(BURST)))) == 3  # the rest of the one-second burst
    now[0] += 0.5
    assert len(budget.allow("video", list(range(BURST)))) == 10
    now[0] += 10.0
    assert len(budget.allow("video", list(range(100)))) == 20  # the burst never exceeds one second's worth


def test_memory_is_bounded_whatever_the_nacks_name():
    now = [0.0]
    budget = RetransmitBudget(rate=10**9, per_packet=1, remember=64, clock=lambda: now[0])
    for start in range(0, 65536, 17):
        budget.allow("video", list(range(start, start + 17)))
    assert len(budget._sent) <= 64


class NackingViewer(Viewer):
    """A viewer that counts the retransmissions (RTX packets) it receives and can send any NACK."""

    def __init__(self) -> None:
        super().__init__(kinds=("video",))
        self.rtx = 0
        self.video_ssrc: int | None = None
        self.seqs: list[int] = []

    async def accept(self, answer: str) -> None:
        await super().accept(answer)
        video = next(m for m in SessionDescription.parse(answer).media if m.kind == "video")
        rtx_pts = {c.payloadType for c in video.rtp.codecs if c.name.lower() == "rtx"}
        media_pt = video.rtp.codecs[0].payloadType
        transport = self.pc.getTransceivers()[0].receiver.transport
        handle = transport._handle_rtp_data

        async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
            pt = data[1] & 0x7F
            if pt in rtx_pts:
                self.rtx += 1
            elif pt == media_pt:
                self.video_ssrc = int.from_bytes(data[8:12], "big")
                self.seqs.append(int.from_bytes(data[2:4], "big"))
            await handle(data, arrival_time_ms)

        transport._handle_rtp_data = on_rtp

    async def nack(self, lost: list[int]) -> None:
        await self.pc.getTransceivers()[0].receiver._send_rtcp_nack(self.video_ssrc, lost)


async def nack_storm(viewer: NackingViewer, rounds: int) -> tuple[int, float]:
    """NACK the same 17 received packets ``rounds`` times, 10 ms apart; RTX packets received, and seconds."""
    async with asyncio.timeout(10):
        while len(viewer.seqs) < 60:
            await asyncio.sleep(0.05)
    lost = viewer.seqs[-BURST - 20 : -20]
    before, started = viewer.rtx, time.monotonic()
    for _ in range(rounds):
        await viewer.nack(lost)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # the last answers arrive
    return viewer.rtx - before, time.monotonic() - started


async def start_viewer(relay, h264, opus) -> tuple[Publisher, NackingViewer]:
    publisher = Publisher(h264, opus)
    assert (await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)).status == 201
    viewer = NackingViewer()
    assert (await viewer.whep(relay.http, relay.base, "shop")).status == 201
    return publisher, viewer


@pytest.fixture
def media_config(forwarding: str) -> MediaConfig:
    return MediaConfig(announced_addresses=("127.0.0.1",), forwarding=forwarding, rtx_rate=1000, rtx_per_packet=2)


async def test_repeated_nacks_of_one_packet_are_answered_a_bounded_number_of_times(relay, h264, opus):
    publisher, viewer = await start_viewer(relay, h264, opus)
    resent, _ = await nack_storm(viewer, rounds=40)
    # answered (the relay does retransmit), but each packet at most twice: not 40 times
    assert BURST <= resent <= 2 * BURST, resent
    await viewer.close()
    await publisher.close()


@pytest.mark.parametrize(
    "media_config",
    [pytest.param(MediaConfig(announced_addresses=("127.0.0.1",), forwarding=f, rtx_rate=30, rtx_per_packet=1000),
                  id=f) for f in ("fast", "stock")],
)
async def test_retransmissions_per_viewer_per_second_are_bounded(relay, h264, opus):
    publisher, viewer = await start_viewer(relay, h264, opus)
    resent, seconds = await nack_storm(viewer, rounds=60)
    assert BURST <= resent <= 30 * (seconds + 1), (resent, seconds)
    await viewer.close()
    await publisher.close()

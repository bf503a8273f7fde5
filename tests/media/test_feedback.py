"""What viewers rely on besides media, on both forwarding paths: NACK retransmission, sender reports, RTCP read."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtcpSrPacket
from conftest import relay_for
from media_peers import Publisher, Viewer
from test_relay import H264_OPUS, close_all, metric, wait_for

from engine.media.config import MediaConfig
from engine.media.rtp import NTP_EPOCH_OFFSET, split_annexb


def frame_numbers(stream, frames) -> list[int]:
    """Which frame of the looping pre-encoded stream each received frame is (NAL units compared)."""
    index = {tuple(split_annexb(f.data)): i for i, f in enumerate(stream.frames)}
    return [index.get(tuple(split_annexb(data)), -1) for _, data, _ in frames]  # -1: a damaged frame


async def test_lost_packets_are_recovered_through_nack(relay, forwarding, h264_large, opus):
    publisher = Publisher(h264_large, opus)
    assert (await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)).status == 201
    lossy = Viewer(drop_every=7)
    assert (await lossy.whep(relay.http, relay.base, "shop")).status == 201
    await wait_for(lambda: lossy.log.count("video") >= 90, timeout=15)
    assert lossy.dropped >= 15
    numbers = frame_numbers(h264_large, lossy.log.frames["video"])
    loop = len(h264_large.frames)
    gaps = [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != (a + 1) % loop]
    assert not gaps, f"frames missing although their packets were NACKed: {gaps[:5]}"
    assert metric("livecart_media_nacks_total", room="shop") >= lossy.dropped // 2
    if forwarding == "fast":
        assert metric("livecart_media_retransmits_total", room="shop") >= lossy.dropped // 2
    await close_all(lossy, publisher)


async def test_sender_reports_map_rtp_time_to_wall_clock_for_both_streams(relay, forwarding, h264, opus):
    publisher = Publisher(h264, opus)
    await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    viewer = Viewer()
    await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: len({p.ssrc for _, p in viewer.rtcp if isinstance(p, RtcpSrPacket)}) == 2, timeout=10)
    await wait_for(lambda: sum(isinstance(p, RtcpSrPacket) for _, p in viewer.rtcp) >= 4, timeout=10)
    for arrived, packet in viewer.rtcp:
        if not isinstance(packet, RtcpSrPacket):
            continue
        info = packet.sender_info
        ntp_seconds = info.ntp_timestamp / (1 << 32) - NTP_EPOCH_OFFSET
        assert abs(ntp_seconds - arrived) < 0.5, "SR wall clock must be the send time"
        assert info.packet_count > 0 and info.octet_count > 0
    # the latest SR of each stream predicts the RTP timestamp of that stream's latest packet
    for ssrc, (received, rtp_ts) in viewer.last_rtp.items():
        reports = [p for _, p in viewer.rtcp if isinstance(p, RtcpSrPacket) and p.ssrc == ssrc]
        if not reports:
            continue
        info = reports[-1].sender_info
        clock = 90000 if ssrc == video_ssrc(viewer) else 48000
        predicted = info.rtp_timestamp + (received - (info.ntp_timestamp / (1 << 32) - NTP_EPOCH_OFFSET)) * clock
        assert abs(((rtp_ts - int(predicted) + (1 << 31)) % (1 << 32)) - (1 << 31)) < 0.25 * clock
    await close_all(viewer, publisher)


def video_ssrc(viewer: Viewer) -> int:
    remote = viewer.pc.remoteDescription.sdp
    section = remote[remote.index("m=video") :]
    return int(section.split("a=ssrc:")[1].split()[0])


async def test_receiver_reports_give_round_trip_times(relay, forwarding, h264, opus):
    if forwarding != "fast":
        pytest.skip("aiortc's stock sender keeps receiver reports in getStats(), not in the relay's metrics")
    publisher = Publisher(h264, opus)
    await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
    viewer = Viewer()
    await viewer.whep(relay.http, relay.base, "shop")
    await wait_for(lambda: metric("livecart_media_viewer_rtt_seconds_count", room="shop") >= 2, timeout=10)
    assert metric("livecart_media_viewer_rtt_seconds_sum", room="shop") < 0.5  # loopback
    assert metric("livecart_media_viewer_fraction_lost_count", room="shop") >= 2
    await close_all(viewer, publisher)


@pytest.fixture
def sendto_config() -> MediaConfig:
    return MediaConfig(announced_addresses=("127.0.0.1",), forwarding="fast", udp_gso=False)


async def test_fast_path_without_gso(sendto_config, tmp_path, h264, opus):
    """One ``sendto`` per packet (no UDP GSO): what other kernels and systems get."""
    async with relay_for(sendto_config, tmp_path) as relay:
        publisher = Publisher(h264, opus)
        await publisher.publish(relay.http, relay.base, "shop", relay.key("shop"), H264_OPUS)
        viewer = Viewer()
        await viewer.whep(relay.http, relay.base, "shop")
        await wait_for(lambda: viewer.log.count("video") >= 30 and viewer.log.count("audio") >= 30)
        assert viewer.log.frames["video"][0][2]
        await close_all(viewer, publisher)

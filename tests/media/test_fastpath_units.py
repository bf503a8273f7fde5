"""The fast path's pieces against independent readers: aiortc's depacketizers and RTP/RTCP parsers, real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from fractions import Fraction

import pytest
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    RtpPacket,
    unwrap_rtx,
)
from pylibsrtp import Policy, Session

from engine.media import metrics, rtp
from engine.media.aiortc_compat import SendParameters
from engine.media.fanout import PacketHistory, RoomFanout
from engine.media.fastpath import Stream
from engine.media.forwarding import ViewerCounters
from engine.media.frames import EncodedFrame
from engine.media.srtp import PacketBuffer
from engine.media.udp import GSO_MAX_SEGMENTS, DatagramSender

KEY = os.urandom(30)
EXTENSIONS = {rtp.URI_MID: 4, rtp.URI_ABS_SEND_TIME: 2}


def annexb(*nals: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)


def depacketize_h264(payloads: list[bytes]) -> bytes:
    return b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)


def test_h264_payloads_read_back_by_aiortc():
    sps, pps = b"\x67\x42\xc0\x1f" + os.urandom(8), b"\x68\xce\x3c\x80"
    idr = b"\x65" + os.urandom(20_000)
    slice_ = b"\x41" + os.urandom(3_000)
    frame = annexb(sps, pps, idr, slice_)
    payloads = rtp.packetize_h264(frame)
    assert all(len(p) <= rtp.PAYLOAD_MAX for p in payloads)
    assert payloads[0][0] & 0x1F == rtp.STAP_A  # SPS and PPS aggregated
    idr_packets = [p for p in payloads if p[0] & 0x1F == rtp.FU_A and p[1] & 0x1F == 5]
    assert len({len(p) for p in idr_packets[:-1]}) == 1 and len(idr_packets[-1]) <= len(idr_packets[0])
    assert depacketize_h264(payloads) == frame


def test_h264_three_byte_start_codes_and_single_nals():
    frame = b"\x00\x00\x01\x41" + b"\x07" * 100 + b"\x00\x00\x01\x01\x02"
    payloads = rtp.packetize_h264(frame)
    assert depacketize_h264(payloads) == annexb(b"\x41" + b"\x07" * 100, b"\x01\x02")


@pytest.mark.parametrize("size", [1, 1195, 1196, 1197, 5000, 40_000])
def test_vp8_payloads_read_back_by_aiortc(size):
    data = os.urandom(size)
    payloads = rtp.packetize_vp8(data, picture_id=0x7FFF)
    parsed = [VpxPayloadDescriptor.parse(p) for p in payloads]
    assert [d.partition_start for d, _ in parsed] == [1] + [0] * (len(parsed) - 1)
    assert {d.picture_id for d, _ in parsed} == {0x7FFF}
    assert b"".join(body for _, body in parsed) == data
    assert len({len(p) for p in payloads[:-1]}) <= 1 and len(payloads[-1]) <= len(payloads[0])


def rtp_params(kind: str = "video", rtx: int | None = 97) -> SendParameters:
    return SendParameters(kind, "H264", 96, 90000, rtx, 0x1234, 0x5678, "cname-x", "1", EXTENSIONS)


def extensions_map() -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in EXTENSIONS.items()])
    )
    return extensions


def srtp_pair() -> tuple[Session, Session]:
    policy = {"key": KEY, "srtp_profile": Policy.SRTP_PROFILE_AES128_CM_SHA1_80}
    tx = Session(Policy(ssrc_type=Policy.SSRC_ANY_OUTBOUND, **policy))
    rx = Session(Policy(ssrc_type=Policy.SSRC_ANY_INBOUND, **policy))
    return tx, rx


def encoded(index: int, timestamp: int, payloads: list[bytes]) -> EncodedFrame:
    frame = EncodedFrame("video", "H264", b"".join(payloads), timestamp, Fraction(1, 90000))
    frame.packets, frame.first_index, frame.payload_bytes = payloads, index, sum(map(len, payloads))
    return frame


def packets_of(stream: Stream, frame: EncodedFrame, timestamp: int, ntp: int) -> list[bytes]:
    """``Stream.write_frame`` as separate packets."""
    buffer = PacketBuffer()
    lengths = stream.write_frame(frame, timestamp, ntp, buffer)
    out, offset = [], 0
    for length in lengths:
        out.append(bytes(buffer.view[offset : offset + length]))
        offset += length
    return out


class Loopback:
    """A receiving UDP socket on 127.0.0.1 and a sending one."""

    def __init__(self) -> None:
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.rx.settimeout(1.0)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))

    def sender(self, gso: bool = True) -> DatagramSender:
        return DatagramSender(self.tx.fileno(), self.rx.getsockname(), gso)

    def receive(self, count: int) -> list[bytes]:
        return [self.rx.recv(65536) for _ in range(count)]

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def test_stream_headers_read_back_by_aiortc():
    tx, rx = srtp_pair()
    link = Loopback()
    stream = Stream(rtp_params(), tx, link.sender())
    payloads = [b"a" * 1000, b"b" * 1000, b"c" * 10]
    stream.path.send(packets_of(stream, encoded(50, 9000, payloads), 9000, rtp.ntp_now()))
    packets = [RtpPacket.parse(rx.unprotect(d), extensions_map()) for d in link.receive(3)]
    assert [p.payload for p in packets] == payloads
    assert [p.marker for p in packets] == [0, 0, 1]
    assert {p.ssrc for p in packets} == {0x1234} and {p.payload_type for p in packets} == {96}
    assert [(p.sequence_number - packets[0].sequence_number) & 0xFFFF for p in packets] == [0, 1, 2]
    assert {p.timestamp for p in packets} == {(9000 + stream.ts_origin) & 0xFFFFFFFF}
    assert {p.extensions.mid for p in packets} == {"1"}
    assert packets[0].extensions.abs_send_time is not None
    link.close()


@pytest.mark.parametrize("gso", [True, False])
def test_frame_written_in_place_grows_the_buffer_and_reads_back(gso):
    """``write_frame`` + ``send_packed`` (the pacer's path): a keyframe larger than the buffer, mixed sizes."""
    tx, rx = srtp_pair()
    link = Loopback()
    stream = Stream(rtp_params(), tx, link.sender(gso))
    buffer = PacketBuffer(size=4096)
    payloads = [b"s" * 30] + [os.urandom(1200) for _ in range(70)] + [b"t" * 700, b"u" * 90]
    lengths = stream.write_frame(encoded(0, 3000, payloads), 3000, rtp.ntp_now(), buffer)
    assert buffer.size >= sum(lengths) > 4096
    assert stream.path.send_packed(buffer.view, lengths)
    packets = [RtpPacket.parse(rx.unprotect(d), extensions_map()) for d in link.receive(len(payloads))]
    assert [p.payload for p in packets] == payloads
    assert [p.marker for p in packets] == [0] * (len(payloads) - 1) + [1]
    if gso and DatagramSender.gso_available:
        assert stream.path.calls < len(payloads) // 10
    link.close()


def test_nack_maps_through_segments_and_wraps_in_rtx():
    tx, rx = srtp_pair()
    link = Loopback()
    stream = Stream(rtp_params(), tx, link.sender())
    stream.seq = 0xFFFE  # the 16-bit sequence number wraps inside the second frame
    sent = []
    for first, ts in ((100, 0), (102, 3000), (200, 9000)):  # room packets 104..199 skipped (dropped frames)
        sent += packets_of(stream, encoded(first, ts, [bytes([first]) * 20, bytes([first + 1]) * 20]), ts, 0)
    seqs = [RtpPacket.parse(rx.unprotect(p)).sequence_number for p in sent]
    assert seqs == [0xFFFE, 0xFFFF, 0, 1, 2, 3]
    assert [stream.room_index(s) for s in seqs] == [100, 101, 102, 103, 200, 201]
    assert stream.room_index(4) is None  # never sent: 65535 packets old, before every segment
    again = stream.retransmission(2, b"payload", True, 9000)
    packet = RtpPacket.parse(rx.unprotect(again), extensions_map())
    assert packet.ssrc == 0x5678 and packet.payload_type == 97
    original = unwrap_rtx(packet, payload_type=96, ssrc=0x1234)
    assert (original.sequence_number, original.payload, original.marker) == (2, b"payload", 1)
    assert original.timestamp == (9000 + stream.ts_origin) & 0xFFFFFFFF
    link.close()


def test_sender_report_and_bye_read_back_by_aiortc():
    tx, rx = srtp_pair()
    link = Loopback()
    stream = Stream(rtp_params(), tx, link.sender())
    assert stream.sender_report() is None  # nothing sent yet
    packets_of(stream, encoded(0, 90000, [b"x" * 100]), 90000, 0)
    stream.last_send = time.time()
    report, sdes = RtcpPacket.parse(rx.unprotect_rtcp(stream.sender_report()))
    assert isinstance(report, RtcpSrPacket) and report.ssrc == 0x1234
    assert report.sender_info.packet_count == 1 and report.sender_info.octet_count == 100
    assert abs(report.sender_info.rtp_timestamp - ((90000 + stream.ts_origin) & 0xFFFFFFFF)) < 900
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].items == [(1, b"cname-x")]
    (goodbye,) = RtcpPacket.parse(rtp.bye([0x1234, 0x5678]))
    assert isinstance(goodbye, RtcpByePacket) and goodbye.sources == [0x1234, 0x5678]
    link.close()


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendto"])
def test_datagrams_arrive_in_order_with_or_without_gso(gso):
    link = Loopback()
    sender = link.sender(gso)
    batches = [
        [b"s" * 40] + [bytes([i]) * 1200 for i in range(GSO_MAX_SEGMENTS + 5)] + [b"e" * 300],  # > one GSO call
        [b"a" * 500, b"b" * 900, b"c" * 900, b"d" * 100, b"e" * 100],  # mixed sizes: several runs
        [b"only"],
    ]
    for batch in batches:
        calls = sender.calls
        assert sender.send(batch)
        assert link.receive(len(batch)) == batch
        if gso and DatagramSender.gso_available and len(batch) > 10:
            assert sender.calls - calls <= 4
        elif not gso:
            assert sender.calls - calls == len(batch)
    sender.close()
    link.close()


def test_history_keeps_the_last_packets_only():
    history = PacketHistory(4)
    history.add(encoded(0, 0, [b"a", b"b", b"c"]))
    history.add(encoded(3, 3000, [b"d", b"e"]))
    assert history.get(0) is None  # overwritten by index 4
    entry = history.get(4)
    assert (entry.payload, entry.marker, entry.timestamp, entry.frame_index) == (b"e", True, 3000, 3)
    assert history.get(2).marker and not history.get(3).marker


class CountingViewer:
    """A pacer client that sends a fixed number of packets per frame."""

    def __init__(self, frames: int, packets: int) -> None:
        self.scheduled = False
        self.frames = frames
        self.packets = packets
        self.sent_at: list[int] = []

    def flush(self) -> int:
        self.frames -= 1
        self.sent_at.append(Turns.count)
        return self.packets

    def pending(self) -> bool:
        return self.frames > 0

    def send_reports(self) -> None:
        """No streams: nothing to report."""


class Turns:
    count = 0


async def test_pacer_goes_frame_major_and_yields_in_slices():
    counters = ViewerCounters(metrics.PACKETS_OUT, metrics.BYTES_OUT, metrics.DROPPED, "unit")
    fanout = RoomFanout(counters, metrics.RETRANSMITS.labels("unit"), 16, slice_packets=50)
    viewers = [CountingViewer(frames=2, packets=10) for _ in range(20)]

    async def ticker() -> None:
        while True:
            Turns.count += 1
            await asyncio.sleep(0)

    Turns.count = 0
    tick = asyncio.ensure_future(ticker())
    for viewer in viewers:
        fanout.attach(viewer)
        fanout.schedule(viewer)
    await asyncio.sleep(0.05)
    tick.cancel()
    fanout.close()
    assert all(v.frames == 0 and not v.scheduled for v in viewers)
    # 400 packets in slices of 50: the loop ran other tasks between slices
    turns = sorted({t for v in viewers for t in v.sent_at})
    assert len(turns) >= 400 // 50
    # frame-major: every viewer got its first frame before any got its second
    assert max(v.sent_at[0] for v in viewers) <= min(v.sent_at[1] for v in viewers)

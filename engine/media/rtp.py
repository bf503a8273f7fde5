"""RTP payloads and RTCP reports for the fast forwarding path, built without aiortc.

Packetization happens once per frame per room, so its output is shared by
every viewer: only the 12-byte RTP header (and a few extension bytes) differs
between viewers. The packetizers split a frame into payloads of equal size
with a shorter last one, which lets a frame's packets leave in one UDP GSO
call (equal segments, the last may be shorter).

Formats: H264 per RFC 6184 (single NAL units, STAP-A aggregation, FU-A
fragments; packetization-mode 1, as aiortc negotiates), VP8 per RFC 7741
(with a 15-bit picture id, as aiortc sends), Opus per RFC 7587 (the packet
itself). RTCP sender reports, SDES and BYE per RFC 3550.
"""

from __future__ import annotations

import struct
import time

#: Payload bytes per RTP packet (headers and the SRTP tag come on top, staying under a 1500-byte MTU).
PAYLOAD_MAX = 1200

#: V=2, no padding, no CSRC; 0x90 when a header extension follows.
RTP_V2 = 0x80
RTP_V2_EXT = 0x90
RTP_HEADER = struct.Struct("!BBHII")

STAP_A = 24
FU_A = 28

#: Seconds between the NTP epoch (1900) and the Unix epoch (1970).
NTP_EPOCH_OFFSET = 2208988800

_SR = struct.Struct("!BBHIIIIII")
_SDES_HEAD = struct.Struct("!BBHI")
_BYE = struct.Struct("!BBH")

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (start codes of 3 or 4 bytes removed)."""
    nals = []
    find = data.find
    start = find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        end = find(b"\x00\x00\x01", begin)
        if end < 0:
            nals.append(data[begin:])
            break
        stop = end - 1 if data[end - 1] == 0 else end  # a 4-byte start code's leading zero
        if stop > begin:
            nals.append(data[begin:stop])
        start = end
    return [n for n in nals if n]


def _fragments(length: int, room: int) -> list[tuple[int, int]]:
    """(start, end) slices of ``length`` bytes in packets of at most ``room`` bytes: equal, the last shorter."""
    count = -(-length // room)
    size = -(-length // count)
    return [(i, min(i + size, length)) for i in range(0, length, size)]


def packetize_h264(data: bytes, max_size: int = PAYLOAD_MAX) -> list[bytes]:
    """RTP payloads of one H264 access unit: STAP-A for runs of small NALs, FU-A for large ones."""
    payloads: list[bytes] = []
    group: list[bytes] = []
    group_size = 1  # the STAP-A NAL header

    def flush() -> None:
        if len(group) == 1:
            payloads.append(group[0])
        elif group:
            nri = max(n[0] & 0x60 for n in group)
            forbidden = max(n[0] & 0x80 for n in group)
            parts = [bytes([forbidden | nri | STAP_A])]
            for nal in group:
                parts += (len(nal).to_bytes(2, "big"), nal)
            payloads.append(b"".join(parts))
        group.clear()

    for nal in split_annexb(data):
        if len(nal) > max_size:
            flush()
            group_size = 1
            head = nal[0]
            indicator = bytes([(head & 0xE0) | FU_A])
            kind = head & 0x1F
            body = memoryview(nal)[1:]
            pieces = _fragments(len(body), max_size - 2)
            last = len(pieces) - 1
            for i, (begin, end) in enumerate(pieces):
                fu_header = kind | (0x80 if i == 0 else 0) | (0x40 if i == last else 0)
                payloads.append(indicator + bytes([fu_header]) + body[begin:end])
            continue
        if group and group_size + 2 + len(nal) > max_size:
            flush()
            group_size = 1
        group.append(nal)
        group_size += 2 + len(nal)
    flush()
    return payloads


def packetize_vp8(data: bytes, picture_id: int, max_size: int = PAYLOAD_MAX) -> list[bytes]:
    """RTP payloads of one VP8 frame, each with the 4-byte descriptor (X, I, M: 15-bit picture id)."""
    pid = (0x8000 | (picture_id & 0x7FFF)).to_bytes(2, "big")
    first = b"\x90\x80" + pid  # X=1, S=1, PID=0; I=1
    rest = b"\x80\x80" + pid
    view = memoryview(data)
    pieces = _fragments(len(data), max_size - 4) if data else [(0, 0)]
    return [(first if i == 0 else rest) + view[b:e] for i, (b, e) in enumerate(pieces)]


def header_extensions(ids: dict[str, int], mid: str | None) -> tuple[bytes, int]:
    """The one-byte-header extension block (RFC 8285) for ``mid`` and abs-send-time.

    Returns the block with abs-send-time zeroed and the offset of its 3 bytes
    (-1 when not negotiated); the block is empty when nothing is negotiated.
    """
    elements = b""
    abs_offset = -1
    if URI_MID in ids and mid:
        value = mid.encode()
        elements += bytes([(ids[URI_MID] << 4) | (len(value) - 1)]) + value
    if URI_ABS_SEND_TIME in ids:
        elements += bytes([(ids[URI_ABS_SEND_TIME] << 4) | 2])
        abs_offset = 4 + len(elements)
        elements += b"\x00\x00\x00"
    if not elements:
        return b"", -1
    elements += b"\x00" * (-len(elements) % 4)
    return b"\xbe\xde" + (len(elements) // 4).to_bytes(2, "big") + elements, abs_offset


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp."""
    now = time.time() + NTP_EPOCH_OFFSET
    return int(now * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def abs_send_time(ntp: int) -> bytes:
    """abs-send-time: 6.18 fixed-point seconds, 24 bits."""
    return ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")


def sender_report(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    """An RTCP SR without report blocks (RFC 3550 section 6.4.1)."""
    return _SR.pack(
        0x80, 200, 6, ssrc, ntp >> 32, ntp & 0xFFFFFFFF, rtp_timestamp & 0xFFFFFFFF,
        packets & 0xFFFFFFFF, octets & 0xFFFFFFFF,
    )


def sdes_cname(ssrc: int, cname: str) -> bytes:
    """An RTCP SDES packet with one chunk carrying CNAME."""
    value = cname.encode()[:255]
    item = bytes([1, len(value)]) + value + b"\x00"
    item += b"\x00" * (-(len(item) + 4) % 4)
    return _SDES_HEAD.pack(0x81, 202, (len(item) + 4) // 4, ssrc) + item


def bye(ssrcs: list[int]) -> bytes:
    """An RTCP BYE for ``ssrcs``."""
    return _BYE.pack(0x80 | len(ssrcs), 203, len(ssrcs)) + b"".join(s.to_bytes(4, "big") for s in ssrcs)

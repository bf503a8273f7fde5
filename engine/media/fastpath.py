"""The fast forwarding path: per viewer, only a header rewrite, SRTP and a send.

``FastOutput`` is the second ``ViewerOutput`` (engine/media/forwarding.py has
the stock one). aiortc still negotiates the viewer's connection (ICE, DTLS,
SRTP keys, SSRCs, payload types, header extension ids), but its sender never
runs (engine/media/aiortc_compat.py, ``take_over_sender``): frames arrive
already packetized by the room (engine/media/fanout.py), and per packet this
module only packs a 12-byte header (the viewer's SSRC, sequence number,
timestamp offset and payload type, plus its negotiated MID and abs-send-time
extensions), protects it with the viewer's SRTP session and hands the frame's
packets to one UDP GSO call (engine/media/udp.py).

What viewers relied on from aiortc's sender is kept:

- NACK: a lost sequence number is mapped back to the room's packet index
  through this viewer's *segments* (a new segment starts whenever the viewer
  skipped room packets: a late join, a drop until the next keyframe, a new
  publisher), then re-sent from the room's shared history, wrapped in RTX
  when the viewer negotiated it (as aiortc does).
- PLI/FIR go to the room (rate limited there); REMB and receiver reports are
  read (loss and round-trip time into metrics, values kept per stream).
- An RTCP sender report per stream about every second (NTP time and the RTP
  timestamp of the same instant), so browsers keep audio and video in sync.
- Per-viewer bounded queues with drop-until-keyframe (``FrameQueue``), also
  when the kernel refuses a send because the viewer's socket buffer is full.
"""

from __future__ import annotations

import contextlib
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCRtpSender
from pylibsrtp import Error as SrtpError

from engine.media import aiortc_compat, metrics, rtp
from engine.media.aiortc_compat import SendParameters, SrtpSession
from engine.media.budgets import RetransmitBudget
from engine.media.fanout import RoomFanout
from engine.media.forwarding import FrameQueue, ViewerCounters, add_sender
from engine.media.frames import EncodedFrame
from engine.media.srtp import MAX_TRAILER, PacketBuffer, srtp_protect
from engine.media.srtp import context as srtp_context
from engine.media.udp import DatagramSender

log = logging.getLogger(__name__)

#: Sequence-number segments remembered per stream for NACK mapping (one per skip in the room's packets).
SEGMENTS = 64

_pack = rtp.RTP_HEADER.pack
#: Where every viewer's packets of a frame are written and protected, one frame at a time.
_BUFFER = PacketBuffer()


def _random_sequence() -> int:
    """Lower half of the range, as aiortc does, so SRTP's rollover counter starts cleanly."""
    return random.randrange(0x8000)


class Stream:
    """The RTP state of one viewer's SSRC (one kind)."""

    __slots__ = (
        "abs_offset", "b0", "clock_rate", "cname", "expect", "ext", "fraction_lost", "jitter", "kind",
        "last_send", "last_ts", "lsr", "lsr_time", "octets", "packets", "path", "pt", "remb", "rtt",
        "rtx_pt", "rtx_seq", "rtx_ssrc", "segments", "seq", "srtp", "srtp_context", "ssrc", "ts_origin",
        "head_size", "pack_head",
    )  # fmt: skip

    def __init__(self, params: SendParameters, srtp: SrtpSession, path: DatagramSender) -> None:
        self.kind = params.kind
        self.ssrc = params.ssrc
        self.pt = params.payload_type
        self.clock_rate = params.clock_rate
        self.rtx_pt = params.rtx_payload_type
        self.rtx_ssrc = params.rtx_ssrc
        self.rtx_seq = _random_sequence()
        self.cname = params.cname
        self.srtp = srtp
        self.srtp_context = srtp_context(srtp)
        self.path = path
        self.ext, self.abs_offset = rtp.header_extensions(params.extension_ids, params.mid)
        self.head_size = 12 + len(self.ext)
        self.pack_head = struct.Struct(f"!BBHII{len(self.ext)}s").pack_into  # header and extensions at once
        self.b0 = rtp.RTP_V2_EXT if self.ext else rtp.RTP_V2
        self.seq = _random_sequence()  # the next sequence number, not wrapped
        self.ts_origin = random.getrandbits(32)
        self.expect = -1  # the room packet index that continues the current segment
        self.segments: deque[tuple[int, int]] = deque(maxlen=SEGMENTS)  # (first seq, room index - seq)
        self.packets = self.octets = 0
        self.last_ts = 0
        self.last_send = 0.0
        self.lsr = -1
        self.lsr_time = 0.0
        self.fraction_lost = self.jitter = self.remb = 0
        self.rtt: float | None = None

    def header_extension(self, ntp: int) -> bytes:
        if self.abs_offset < 0:
            return self.ext
        offset = self.abs_offset
        return self.ext[:offset] + rtp.abs_send_time(ntp) + self.ext[offset + 3 :]

    def write_frame(self, frame: EncodedFrame, timestamp: int, ntp: int, buffer: PacketBuffer) -> list[int]:
        """Write the frame's packets for this viewer into ``buffer``, protected, back to back from 0.

        Returns their lengths; advances the sequence number.
        """
        payloads = frame.packets or ()
        seq = self.seq
        if frame.first_index != self.expect:
            self.segments.append((seq, frame.first_index - seq))
        count = len(payloads)
        self.expect = frame.first_index + count
        ts = (timestamp + self.ts_origin) & 0xFFFFFFFF
        ext = self.header_extension(ntp)
        view = buffer.reserve(frame.payload_bytes + count * (self.head_size + MAX_TRAILER))
        cdata, cell = buffer.cdata, buffer.cell
        pack_head = self.pack_head
        context = self.srtp_context
        b0, pt, ssrc = self.b0, self.pt, self.ssrc
        last = count - 1
        lengths = []
        offset = 0
        head_size = self.head_size
        for i, payload in enumerate(payloads):
            pack_head(view, offset, b0, pt | 0x80 if i == last else pt, (seq + i) & 0xFFFF, ts, ssrc, ext)
            body = offset + head_size
            end = body + len(payload)
            view[body:end] = payload
            cell[0] = end - offset
            if srtp_protect(context, cdata + offset, cell):
                raise SrtpError(f"libsrtp could not protect packet {seq + i} of SSRC {ssrc}")
            length = cell[0]
            lengths.append(length)
            offset += length
        self.seq = seq + count
        self.packets += count
        self.octets += frame.payload_bytes
        self.last_ts = ts
        return lengths

    def room_index(self, lost: int) -> int | None:
        """The room packet index sent with sequence number ``lost`` (16-bit), if still known."""
        newest = self.seq - 1
        unwrapped = newest - ((newest - lost) & 0xFFFF)
        for first, delta in reversed(self.segments):
            if unwrapped >= first:
                return unwrapped + delta
        return None

    def retransmission(self, lost: int, payload: bytes, marker: bool, timestamp: int) -> bytes:
        """Packet ``lost`` again, wrapped in RTX (RFC 4588) when negotiated, protected."""
        ts = (timestamp + self.ts_origin) & 0xFFFFFFFF
        ext = self.header_extension(rtp.ntp_now())
        b1 = self.pt | 0x80 if marker else self.pt
        if self.rtx_pt is None:
            return self.srtp.protect(_pack(self.b0, b1, lost, ts, self.ssrc) + ext + payload)
        rtx_b1 = self.rtx_pt | 0x80 if marker else self.rtx_pt
        seq = self.rtx_seq
        self.rtx_seq = (seq + 1) & 0xFFFF
        packet = _pack(self.b0, rtx_b1, seq, ts, self.rtx_ssrc) + ext + lost.to_bytes(2, "big") + payload
        return self.srtp.protect(packet)

    def sender_report(self) -> bytes | None:
        """SR + SDES for this stream, protected; None before the first packet."""
        if not self.packets:
            return None
        now = time.time()
        ntp = int((now + rtp.NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF
        rtp_now = self.last_ts + int((now - self.last_send) * self.clock_rate)
        self.lsr = (ntp >> 16) & 0xFFFFFFFF
        self.lsr_time = now
        report = rtp.sender_report(self.ssrc, ntp, rtp_now, self.packets, self.octets)
        return self.srtp.protect_rtcp(report + rtp.sdes_cname(self.ssrc, self.cname))


class FastOutput:
    """``ViewerOutput`` that writes RTP itself from the room's shared packets."""

    def __init__(
        self,
        fanout: RoomFanout,
        room_id: str,
        codecs: dict[str, str],
        limit: int,
        counters: ViewerCounters,
        on_keyframe_request: Callable[[], None],
        on_nack: Callable[[int], None],
        on_first_frame: Callable[[], None],
        gso: bool = True,
        retransmit_budget: RetransmitBudget | None = None,
    ) -> None:
        self._fanout = fanout
        self._retransmit_budget = retransmit_budget  # None: every NACK answered (benches)
        self._codecs = codecs
        self._counters = counters
        self._on_keyframe_request = on_keyframe_request
        self._on_nack = on_nack
        self._on_first_frame = on_first_frame
        self._gso = gso
        self._queues = {kind: FrameQueue(kind, limit, counters, on_keyframe_request) for kind in codecs}
        self._senders: dict[str, RTCRtpSender] = {}
        self._paths: dict[tuple[int, tuple[str, int]], DatagramSender] = {}
        self.streams: dict[str, Stream] = {}
        self._replay_ts: dict[int, int] = {}  # late joiner: first_index of a cached frame -> packed timestamp
        self._sent_first = False
        self._closed = False
        self._loss = metrics.VIEWER_LOSS.labels(room_id)
        self._rtt = metrics.VIEWER_RTT.labels(room_id)
        self.scheduled = False

    # --- negotiation ---

    def add_to(self, pc: RTCPeerConnection) -> None:
        """Before ``setRemoteDescription``: one send-only transceiver per kind, one codec each."""
        for kind, codec in self._codecs.items():
            self._senders[kind] = add_sender(pc, kind, kind, codec)

    def bind(self) -> None:
        """After ``setRemoteDescription``: aiortc negotiates the senders, this output sends."""
        for sender in self._senders.values():
            aiortc_compat.take_over_sender(sender, self._on_ready, self)

    def _on_ready(self, params: SendParameters) -> None:
        """A sender's transport is connected: its stream can send."""
        if self._closed:
            return
        srtp, path = self._path_of(params.kind)
        self.streams[params.kind] = Stream(params, srtp, path)
        self._fanout.attach(self)
        if self.pending():
            self._fanout.schedule(self)

    def _path_of(self, kind: str) -> tuple[SrtpSession, DatagramSender]:
        """The SRTP session and the socket path of the ICE pair the sender's transport nominated."""
        srtp, fileno, address = aiortc_compat.send_path(self._senders[kind])
        path = self._paths.get((fileno, address))
        if path is None:
            path = self._paths[(fileno, address)] = DatagramSender(fileno, address, self._gso)
        return srtp, path

    def ice_restarted(self) -> None:
        """ICE moved to a new socket pair (an RFC 9725 restart): send there, on the same SRTP session."""
        retired, self._paths = self._paths, {}
        for kind, stream in self.streams.items():
            stream.path = self._path_of(kind)[1]
        for path in retired.values():
            path.close()

    # --- ViewerOutput ---

    def start(self, frames: list[EncodedFrame]) -> None:
        video = self._queues.get("video")
        if video is None or not frames:
            return
        edge = frames[-1].timestamp
        for index, frame in enumerate(frames):
            packed = edge - (len(frames) - 1 - index)
            self._replay_ts[frame.first_index] = packed
            video.enqueue(frame, packed)
        self._wake()

    def push(self, frame: EncodedFrame) -> None:
        queue = self._queues.get(frame.kind)
        if queue is None or not queue.enqueue(frame, frame.timestamp):
            return
        if frame.keyframe and self._replay_ts:
            self._replay_ts.clear()  # a new group of pictures: the replayed one is no longer NACKed
        self._wake()

    def resync(self) -> None:
        for queue in self._queues.values():
            queue.resync()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fanout.detach(self)
        for stream in self.streams.values():
            with contextlib.suppress(OSError):
                stream.path.send([stream.srtp.protect_rtcp(rtp.bye([stream.ssrc]))])
        for path in self._paths.values():
            path.close()
        self._paths.clear()
        self.streams.clear()

    # --- the pacer's side ---

    def _wake(self) -> None:
        if not self.scheduled and self.streams:
            self._fanout.schedule(self)

    def pending(self) -> bool:
        streams = self.streams
        for kind, queue in self._queues.items():  # noqa: SIM110 (no generator per call on the hot path)
            if queue.frames and kind in streams:
                return True
        return False

    def flush(self) -> int:
        """Send the next queued video frame and every queued audio frame (called by the room's pacer).

        Video goes one frame per turn, so a late joiner's cached group of
        pictures is spread over the pacer's turns; audio (one small packet per
        frame) is drained, since it arrives more often (every 20 ms) than a
        viewer's turn comes round when the pacer is busy with hundreds of
        viewers, and one frame per turn would let it fall seconds behind.
        """
        sent = 0
        fanout = self._fanout
        now = time.time()
        ntp = int((now + rtp.NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF
        for kind, queue in self._queues.items():
            frames = queue.frames
            stream = self.streams.get(kind)
            if stream is None:
                continue
            turns = len(frames) if kind == "audio" else min(1, len(frames))
            for _ in range(turns):
                frame, timestamp = frames.popleft()
                lengths = stream.write_frame(frame, timestamp, ntp, _BUFFER)
                stream.last_send = now
                try:
                    delivered = stream.path.send_packed(_BUFFER.view, lengths)
                except OSError as exc:
                    log.info("viewer send failed (%s): stopping this viewer's media", exc)
                    self._stop_sending()
                    return sent
                sent += len(lengths)
                fanout.frames[kind] += 1
                fanout.bytes[kind] += frame.payload_bytes
                if kind == "video" and not self._sent_first:
                    self._sent_first = True
                    self._on_first_frame()
                if not delivered:
                    queue.drop_until_keyframe()  # the socket buffer is full: this viewer is behind
                    break
        return sent

    def _stop_sending(self) -> None:
        self._fanout.detach(self)
        for queue in self._queues.values():
            queue.frames.clear()
        self.streams.clear()

    def send_reports(self) -> None:
        """One SR + SDES per stream (called about once a second by the room)."""
        for stream in list(self.streams.values()):
            report = stream.sender_report()
            if report is not None:
                try:
                    stream.path.send([report])
                except OSError:
                    self._stop_sending()
                    return

    # --- the viewer's RTCP (aiortc_compat.SenderFeedback) ---

    def on_nack(self, kind: str, lost: list[int]) -> None:
        self._on_nack(len(lost))
        stream = self.streams.get(kind)
        if stream is None:
            return
        history = self._fanout.history[kind]
        found = {}
        for seq in lost:
            index = stream.room_index(seq)
            entry = history.get(index) if index is not None else None
            if entry is not None:
                found[seq] = entry
        packets = []
        budget = self._retransmit_budget
        for seq in budget.allow(kind, list(found)) if budget is not None else found:
            entry = found[seq]
            timestamp = entry.timestamp
            if kind == "video":
                timestamp = self._replay_ts.get(entry.frame_index, timestamp)
            packets.append(stream.retransmission(seq, entry.payload, entry.marker, timestamp))
        if packets:
            self._fanout.retransmits += len(packets)
            try:
                stream.path.send(packets)
            except OSError:
                self._stop_sending()

    def on_keyframe_request(self) -> None:
        self._on_keyframe_request()

    def on_report(self, kind: str, fraction_lost: int, jitter: int, lsr: int, dlsr: int) -> None:
        stream = self.streams.get(kind)
        if stream is None:
            return
        stream.fraction_lost = fraction_lost
        stream.jitter = jitter
        self._loss.observe(fraction_lost / 256)
        if lsr and lsr == stream.lsr:
            stream.rtt = max(0.0, time.time() - stream.lsr_time - dlsr / 65536)
            self._rtt.observe(stream.rtt)

    def on_remb(self, kind: str, bitrate: int) -> None:
        stream = self.streams.get(kind)
        if stream is not None:
            stream.remb = bitrate

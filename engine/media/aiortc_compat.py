"""Every place the relay reaches past aiortc's and aioice's public API.

aiortc is built as a media endpoint (it decodes what it receives and encodes
what it sends) and aioice as a client library (it never offers loopback, binds
only interface addresses). A relay needs seven small changes, all here, all
per connection (nothing is patched globally, so aiortc peers in the same
process, such as test clients, keep their stock behaviour), plus the ICE
restart aiortc lacks:

1. ``bind_ice``: host candidates on configured addresses (announced addresses),
   and a larger socket receive buffer. Wraps aioice's
   ``Connection.get_component_candidates`` on one connection.
2. ``answer_as_dtls_server``: ``a=setup:passive`` in our answers, so peers
   with RSA certificates (aiortc as DTLS client only offers ECDSA suites)
   complete the handshake. Sets the DTLS transport's role before the answer.
3. ``tap_receiver``: encoded frames out of an ``RTCRtpReceiver`` with no
   decoder. The receiver reassembles frames in its jitter buffer, then hands
   ``(codec, frame)`` to its private decoder queue; we replace that queue with
   a sink whose ``get()`` ends aiortc's decoder worker before it creates a
   decoder and whose ``put()`` forwards the encoded frame. Forwarding at this
   level keeps everything aiortc's receiver does for the publisher (RTX
   unwrapping, NACKs upstream, receiver reports, REMB) and costs one frame of
   reassembly delay.
4. ``tap_sender``: viewers' PLI/FIR and NACK are observed on the sender (PLI
   goes upstream to the publisher, rate limited by the room), and the sender
   gets a pack-only "encoder" so it can only packetize ``av.Packet``s (no
   codec context is ever created, not even aiortc's Opus encoder).
5. ``request_keyframe``: sends a PLI on a receiver.
6. ``take_over_sender`` and ``send_path`` (the fast forwarding path,
   engine/media/fastpath.py): aiortc negotiates the sender (SSRCs, payload
   types, header extension ids, DTLS-SRTP keys) but never runs its RTP and
   RTCP tasks; the relay writes packets itself, protected with the DTLS
   transport's outbound SRTP session and sent on the socket of the ICE pair
   aioice nominated. The viewer's RTCP still arrives through aiortc's DTLS
   transport and is handed over as plain callbacks.

7. ``IceRestart``: an ICE restart (RFC 9725 section 4.4) on a live peer
   connection: a new aioice ``Connection`` takes over the ICE transport under
   the same DTLS transport (details on the class).
8. ``frames_without_delay``: a relay hop's receiver (an edge pulling a room
   from another node) gets jitter buffers that hand a video frame out at its
   marker packet and an audio packet at once, instead of aiortc's (next frame
   begins; four audio packets). Replaces the receiver's private jitter buffer.

``check_versions`` runs at import: a different aiortc or aioice minor version
stops the engine with a message instead of failing subtly; the tests in
tests/media/test_aiortc_compat.py check every assumption above.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import aioice
import aiortc
import av
from aioice.candidate import candidate_foundation
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from aiortc.utils import uint16_add

if TYPE_CHECKING:
    from engine.media.budgets import RetransmitBudget

#: (aiortc, aioice) minor versions whose internals this module was checked against.
SUPPORTED_VERSIONS = {("1.16", "0.13")}

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_versions() -> None:
    """Refuse to run on aiortc/aioice versions whose internals were not checked."""
    found = (_minor(aiortc.__version__), _minor(aioice.__version__))
    if found not in SUPPORTED_VERSIONS:
        raise RuntimeError(
            f"engine.media.aiortc_compat supports aiortc/aioice {sorted(SUPPORTED_VERSIONS)}, "
            f"found {found}: re-check the hooks in this module and tests/media/test_aiortc_compat.py"
        )


check_versions()


def codecs_compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    """aiortc's own codec matching (name, clock rate, H264 profile and packetization)."""
    return is_codec_compatible(a, b)


# --- 1. ICE host candidates -------------------------------------------------

_local_cache: dict[str, bool] = {}


def _is_local(address: str) -> bool:
    """Whether this host can bind ``address`` (else it is announced via NAT)."""
    if address not in _local_cache:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
                _local_cache[address] = True
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                _local_cache[address] = False
    return _local_cache[address]


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    connections: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport.iceGatherer._connection
        connections[id(connection)] = connection
    return list(connections.values())


def bind_ice(
    pc: RTCPeerConnection,
    announced: Iterable[str],
    listen_address: str = "0.0.0.0",
    receive_buffer: int | None = None,
) -> None:
    """Make ``pc`` gather host candidates on ``announced`` addresses, and no server-reflexive ones.

    Call after the transceivers exist and before ``setLocalDescription``
    (gathering happens there). An empty ``announced`` keeps aioice's own
    choice of addresses; ``receive_buffer`` applies to every host socket.
    """
    for connection in _ice_connections(pc):
        _bind_connection(connection, tuple(announced), listen_address, receive_buffer)


def _bind_connection(
    connection: Any, announced: tuple[str, ...], listen_address: str, receive_buffer: int | None
) -> None:
    """``bind_ice`` for one aioice ``Connection`` (also used for the connections of ICE restarts)."""
    original = connection.get_component_candidates

    async def gather(component: int, addresses: list[str], timeout: int = 5) -> list[Any]:
        binds = [a if _is_local(a) else listen_address for a in announced] if announced else addresses
        # No server-reflexive candidates: aioice waits for the STUN server's answer (up to
        # ``timeout``, 5 s when it is unreachable) before the SDP answer can go out, and the
        # server needs none: peers reach it on its host or announced addresses, and its checks
        # through a NAT are learnt by the peer as peer-reflexive candidates.
        stun_server, connection.stun_server = connection.stun_server, None
        try:
            candidates = await original(component=component, addresses=binds, timeout=timeout)
        finally:
            connection.stun_server = stun_server
        if announced:
            hosts = [c for c in candidates if c.type == "host"]
            for address, bind in zip(announced, binds, strict=True):
                candidate = next((c for c in hosts if c.host == bind), None)
                if candidate is None:
                    raise OSError(f"could not bind an ICE socket on {bind} to announce {address}")
                hosts.remove(candidate)
                candidate.host = address
                candidate.foundation = candidate_foundation("host", "udp", address)
        if receive_buffer:
            for protocol in connection._protocols:
                sock = protocol.transport.get_extra_info("socket")
                if sock is not None:
                    _set_receive_buffer(sock, receive_buffer)
        return candidates

    connection.get_component_candidates = gather


# --- 2. DTLS role -----------------------------------------------------------


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """After ``setRemoteDescription(offer)``: answer ``a=setup:passive``.

    aiortc answers an ``actpass`` offer with ``active`` (it becomes the DTLS
    client); we take the server role unless the offer already claimed it.
    """
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport._role == "auto":
            transport._set_role("server")


# --- 3. Encoded frames from a receiver --------------------------------------

FrameCallback = Callable[[RTCRtpCodecParameters, JitterFrame], None]


class _FrameSink:
    """Stands in for ``RTCRtpReceiver``'s decoder queue (see module docstring)."""

    def __init__(self, on_frame: FrameCallback) -> None:
        self._on_frame = on_frame

    def get(self) -> None:
        """Called once by aiortc's decoder worker thread: ``None`` ends it at once."""
        return None

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is not None:
            self._on_frame(*item)


def tap_receiver(receiver: RTCRtpReceiver, on_frame: FrameCallback) -> None:
    """Deliver ``receiver``'s reassembled encoded frames to ``on_frame``, never decoding.

    Call before the receiver starts (before ``setLocalDescription`` of the
    answer). ``on_frame`` runs on the event loop with timestamps that start at
    0 for this receiver and never wrap.
    """
    receiver._RTCRtpReceiver__decoder_queue = _FrameSink(on_frame)


class _MarkerJitterBuffer(JitterBuffer):
    """Video: hands a frame out at its last packet (RTP marker bit), not when the next frame begins.

    aiortc's buffer only knows a frame is whole when a packet of the next one arrives: a frame
    interval (33 ms at 30 fps) late. A relay hop that forwards at the marker adds only transit.
    A frame whose packets are not all in yet waits for them (NACKs fetch them); a sender that
    sets no marker is served as before, when the next frame begins.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        packets: list[Any] = []
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None
            if packets and packet.timestamp != packets[0].timestamp:
                end = count  # the next frame began: this one is whole
                break
            packets.append(packet)
            if packet.marker:
                end = count + 1
                break
        else:
            return None
        self.remove(end)
        return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packets[0].timestamp)


class _AtOnceJitterBuffer(JitterBuffer):
    """Audio: each packet is a frame, handed out as it arrives (aiortc holds four: 80 ms of Opus).

    A lost packet is skipped (the player conceals it) and a late one, older than the last handed
    out, is dropped by ``add`` itself.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        packet = self._packets[sequence_number % self._capacity]
        self.remove(uint16_add(sequence_number, -self._origin) + 1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)


def frames_without_delay(receiver: RTCRtpReceiver, kind: str) -> None:
    """Make ``receiver`` hand each frame out as soon as it is whole (a relay hop's receiving side).

    Call before the receiver starts. aiortc's own jitter buffers wait for the next frame (video)
    or four packets (audio) before handing a frame out, for its decoders' sake.
    """
    current = receiver._RTCRtpReceiver__jitter_buffer
    buffer = _MarkerJitterBuffer if kind == "video" else _AtOnceJitterBuffer
    receiver._RTCRtpReceiver__jitter_buffer = buffer(capacity=current.capacity, is_video=kind == "video")


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Send a PLI for the receiver's active stream; False if none is known yet."""
    sources = receiver.getSynchronizationSources()
    if not sources:
        return False
    await receiver._send_rtcp_pli(sources[-1].source)
    return True


# --- 4. Pack-only senders ---------------------------------------------------


class _OpusPacker:
    """Opus RTP payload is the packet itself (aiortc's OpusEncoder would open libopus)."""

    clock_rate = 48000

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        return [bytes(packet)], int(packet.pts * packet.time_base * self.clock_rate)


class _PackOnly:
    """Gives aiortc's sender a packetizer that refuses to encode."""

    def __init__(self, packer: Any) -> None:
        self._packer = packer

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        return self._packer.pack(packet)

    def encode(self, frame: object, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise RuntimeError("the media relay never encodes: its tracks yield av.Packet only")


_PACKERS: dict[str, Callable[[], Any]] = {"h264": H264Encoder, "vp8": Vp8Encoder, "opus": _OpusPacker}

#: Time bases of the ``av.Packet``s handed to senders, per codec clock rate.
TIME_BASES = {90000: Fraction(1, 90000), 48000: Fraction(1, 48000)}


def tap_sender(
    sender: RTCRtpSender,
    codec_name: str,
    on_keyframe_request: Callable[[], None],
    on_nack: Callable[[int], None],
    retransmit_budget: RetransmitBudget | None = None,
) -> None:
    """Make ``sender`` packetize only, and report its viewer's PLI/FIR and NACKs.

    PLI/FIR are not passed to aiortc (its reaction, forcing the next encoded
    frame to be a keyframe, means nothing for packets); NACKs still are, and
    aiortc answers them from its per-sender history, for the sequence numbers
    ``retransmit_budget`` allows.
    """
    sender._RTCRtpSender__encoder = _PackOnly(_PACKERS[codec_name.lower()]())
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_keyframe_request()
            return
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            on_nack(len(packet.lost))
            if retransmit_budget is not None:
                packet.lost = retransmit_budget.allow(sender.kind, packet.lost)
                if not packet.lost:
                    return
        await original(packet)

    sender._handle_rtcp_packet = handle


# --- 6. Senders written by the relay itself ---------------------------------


@dataclass(frozen=True)
class SendParameters:
    """What aiortc negotiated for one sender, as the fast path needs it."""

    kind: str
    codec: str
    payload_type: int
    clock_rate: int
    rtx_payload_type: int | None
    ssrc: int
    rtx_ssrc: int
    cname: str
    mid: str | None
    extension_ids: dict[str, int]


class SenderFeedback(Protocol):
    """The viewer's RTCP for one sender, decoded by aiortc, as plain calls."""

    def on_nack(self, kind: str, lost: list[int]) -> None: ...

    def on_keyframe_request(self) -> None: ...

    def on_report(self, kind: str, fraction_lost: int, jitter: int, lsr: int, dlsr: int) -> None: ...

    def on_remb(self, kind: str, bitrate: int) -> None: ...


def _send_parameters(sender: RTCRtpSender, parameters: RTCRtpSendParameters) -> SendParameters:
    codec = parameters.codecs[0]
    rtx = next(
        (
            c.payloadType
            for c in parameters.codecs
            if c.name.lower() == "rtx" and str(c.parameters.get("apt")) == str(codec.payloadType)
        ),
        None,
    )
    return SendParameters(
        kind=sender.kind,
        codec=codec.name,
        payload_type=codec.payloadType,
        clock_rate=codec.clockRate,
        rtx_payload_type=rtx,
        ssrc=sender._ssrc,
        rtx_ssrc=sender._rtx_ssrc,
        cname=parameters.rtcp.cname or "",
        mid=parameters.muxId or None,
        extension_ids={e.uri: e.id for e in parameters.headerExtensions},
    )


def take_over_sender(
    sender: RTCRtpSender, on_ready: Callable[[SendParameters], None], feedback: SenderFeedback
) -> None:
    """Let aiortc negotiate ``sender`` but never send on it: the relay writes its packets.

    Call before ``setRemoteDescription`` completes the connection. When
    aiortc starts the sender (DTLS connected), the sender is registered with
    its transport's RTCP router (so the viewer's RTCP for its SSRC reaches
    ``feedback``) and ``on_ready`` receives the negotiated parameters; no RTP
    or RTCP task is started. ``send_path`` then gives the SRTP session and
    socket to write on.
    """
    kind = sender.kind
    transport = sender.transport

    async def send(parameters: RTCRtpSendParameters) -> None:
        transport._register_rtp_sender(sender, parameters)
        on_ready(_send_parameters(sender, parameters))

    async def stop() -> None:
        sender.transport._unregister_rtp_sender(sender)

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            feedback.on_nack(kind, list(packet.lost))
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            feedback.on_keyframe_request()
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if sender._ssrc in ssrcs:
                feedback.on_remb(kind, bitrate)
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    feedback.on_report(kind, report.fraction_lost, report.jitter, report.lsr, report.dlsr)

    sender.send = send
    sender.stop = stop
    sender._handle_rtcp_packet = handle


class SrtpSession(Protocol):
    """pylibsrtp's ``Session`` as the relay uses it."""

    def protect(self, packet: bytes) -> bytes: ...

    def protect_rtcp(self, packet: bytes) -> bytes: ...


def send_path(sender: RTCRtpSender) -> tuple[SrtpSession, int, tuple[str, int]]:
    """After ``on_ready``: the outbound SRTP session, the ICE socket's descriptor and the remote address.

    The SRTP session is the one aiortc protects its own RTCP with, so the
    relay's packets and aiortc's share one rollover state per SSRC.
    """
    dtls = sender.transport
    session = dtls._tx_srtp
    if session is None:
        raise ConnectionError("DTLS-SRTP is not established on this sender's transport")
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("ICE has no nominated pair for this sender")
    sock = pair.protocol.transport.get_extra_info("socket")
    return session, sock.fileno(), pair.remote_addr


# --- 7. ICE restart (RFC 9725 section 4.4) ----------------------------------
# Everything below belongs to the ICE restart; nothing above depends on it.


class _DropNone:
    """Stands in for a retired aioice connection's receive queue.

    Datagrams still arriving on the retired path go on to the live queue; the
    ``None`` the connection puts when it closes (meaning "transport ended" to
    the DTLS reader) is dropped, since the transport lives on.
    """

    def __init__(self, target: asyncio.Queue[Any] | None) -> None:
        self._target = target

    def put_nowait(self, item: Any) -> None:
        if item is not None and self._target is not None:
            self._target.put_nowait(item)


def _ice_transport(pc: RTCPeerConnection) -> Any:
    transports = {id(t.receiver.transport.transport): t.receiver.transport.transport for t in pc.getTransceivers()}
    if len(transports) != 1:
        raise ValueError("an ICE restart needs a session whose media share one (bundled) ICE transport")
    return next(iter(transports.values()))


class IceRestart:
    """One ICE restart of a peer connection, keeping its DTLS and SRTP sessions.

    aiortc 1.16 has no ICE restart: its ``RTCIceTransport`` wraps one aioice
    ``Connection`` for life, and its DTLS transport reads from and writes to
    ``RTCIceTransport._recv``/``_send``. A restart here builds a second
    ``Connection`` (new ufrag and password, new gathering on the same
    addresses, same role and ICE servers) and, from ``begin``:

    - the ICE transport (and its gatherer) point at the new connection, so
      trickled candidates and the local parameters are the new ones;
    - both connections deliver into the old connection's receive queue, the
      one the DTLS reader is already waiting on, so no datagram of either
      path is lost during the switch;
    - sends use the old pair until the new connection nominates its own;
    - the transport's state monitor waits on the new connection's events, so
      the old path expiring meanwhile does not fail the session.

    ``connect`` completes it (the old connection closes, its sockets with it)
    or, on failure or ``abort``, returns everything to the old connection.
    Works the same for either ICE role, so test clients restart with it too.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        announced: Iterable[str] = (),
        listen_address: str = "0.0.0.0",
        receive_buffer: int | None = None,
    ) -> None:
        self._transport = _ice_transport(pc)
        old = self._old = self._transport._connection
        self._new = aioice.Connection(
            ice_controlling=old.ice_controlling,
            components=len(old._components),
            stun_server=old.stun_server,
            turn_server=old.turn_server,
            turn_username=old.turn_username,
            turn_password=old.turn_password,
            turn_ssl=old.turn_ssl,
            turn_transport=old.turn_transport,
            use_ipv4=old._use_ipv4,
            use_ipv6=old._use_ipv6,
            transport_policy=old._transport_policy,
        )
        _bind_connection(self._new, tuple(announced), listen_address, receive_buffer)
        self._queue: asyncio.Queue[Any] = old._queue
        self.state = "new"  # -> "checking" (after begin) -> "completed" | "failed"

    @property
    def local_parameters(self) -> tuple[str, str]:
        """The new (ufrag, password) to send to the peer."""
        return self._new.local_username, self._new.local_password

    async def gather(self) -> list[str]:
        """Gather the new connection's candidates; their SDP form (``candidate:...`` without ``a=``)."""
        await self._new.gather_candidates()
        return [f"candidate:{c.to_sdp()}" for c in self._new.local_candidates]

    async def begin(self, remote_ufrag: str, remote_password: str, candidates: Iterable[str], end: bool) -> None:
        """Switch the transport to the new connection (see the class docstring) and add the peer's candidates.

        ``candidates`` are ``candidate:...`` strings; ``end`` is the peer's
        end-of-candidates. Raises ``ValueError`` for an unreadable candidate.
        """
        parsed = [aioice.Candidate.from_sdp(c.removeprefix("a=").removeprefix("candidate:")) for c in candidates]
        transport, old, new = self._transport, self._old, self._new
        new.remote_username, new.remote_password = remote_ufrag, remote_password
        new._queue = self._queue
        old._queue = _DropNone(self._queue)
        new._event_waiter, old._event_waiter = old._event_waiter, None
        transport._connection = new
        transport.iceGatherer._connection = new
        transport.iceGatherer._remote_candidates_end = False
        transport._recv = self._recv
        transport._send = self._send
        self.state = "checking"
        for candidate in parsed:
            await new.add_remote_candidate(candidate)
        if end:
            transport.iceGatherer._remote_candidates_end = True  # later candidates are ignored, as aiortc does
            await new.add_remote_candidate(None)

    async def connect(self, timeout: float) -> bool:
        """Run the new connection's checks; True once it carries the session, False if it failed (reverted)."""
        try:
            await asyncio.wait_for(self._new.connect(), timeout)
        except (TimeoutError, ConnectionError):
            await self.abort()
            return False
        if self.state != "checking":
            return False
        self.state = "completed"
        self._transport._send = self._new.send
        self._transport._recv = self._new.recv
        await self._old.close()
        return True

    async def abort(self) -> None:
        """Give up a restart in progress: the old connection carries the session again.

        If the old path ended meanwhile, the transport's monitor is told so
        (the session then fails as it would have without a restart).
        """
        if self.state == "new":  # gathered, never switched: only the new sockets to close
            self.state = "failed"
            await self._new.close()
            return
        if self.state != "checking":
            return
        self.state = "failed"
        transport, old, new = self._transport, self._old, self._new
        transport._connection = old
        transport.iceGatherer._connection = old
        transport._recv = old.recv
        transport._send = old.send
        old._queue = self._queue
        old._event_waiter, new._event_waiter = new._event_waiter, None
        new._queue = _DropNone(None)
        await new.close()
        if transport.state == "closed":
            await old.close()  # the peer connection closed during the restart
        elif old._closed:
            old._emit_event(aioice.ice.ConnectionClosed())

    async def _recv(self) -> bytes:
        item = await self._queue.get()
        if item is None:
            raise ConnectionError("ICE connection lost")
        return item[0]

    async def _send(self, data: bytes) -> None:
        connection = self._new if self._new._nominated else self._old
        await connection.send(data)

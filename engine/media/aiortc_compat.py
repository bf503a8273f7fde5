"""Every place the relay reaches past aiortc's and aioice's public API.

aiortc is built as a media endpoint (it decodes what it receives and encodes
what it sends) and aioice as a client library (it never offers loopback, binds
only interface addresses). A relay needs six small changes, all here, all
per connection (nothing is patched globally, so aiortc peers in the same
process, such as test clients, keep their stock behaviour):

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

``check_versions`` runs at import: a different aiortc or aioice minor version
stops the engine with a message instead of failing subtly; the tests in
tests/media/test_aiortc_compat.py check every assumption above.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import aioice
import aiortc
import av
from aioice.candidate import candidate_foundation
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
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
    """Make ``pc`` gather host candidates on ``announced`` addresses.

    Call after the transceivers exist and before ``setLocalDescription``
    (gathering happens there). An empty ``announced`` keeps aioice's own
    choice of addresses; ``receive_buffer`` applies to every host socket.
    """
    announced = tuple(announced)
    for connection in _ice_connections(pc):
        original = connection.get_component_candidates

        async def gather(
            component: int,
            addresses: list[str],
            timeout: int = 5,
            _original: Callable[..., Awaitable[list[Any]]] = original,
            _connection: Any = connection,
        ) -> list[Any]:
            binds = [a if _is_local(a) else listen_address for a in announced] if announced else addresses
            candidates = await _original(component=component, addresses=binds, timeout=timeout)
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
                for protocol in _connection._protocols:
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
) -> None:
    """Make ``sender`` packetize only, and report its viewer's PLI/FIR and NACKs.

    PLI/FIR are not passed to aiortc (its reaction, forcing the next encoded
    frame to be a keyframe, means nothing for packets); NACKs still are, and
    aiortc answers them from its per-sender history.
    """
    sender._RTCRtpSender__encoder = _PackOnly(_PACKERS[codec_name.lower()]())
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_keyframe_request()
            return
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            on_nack(len(packet.lost))
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

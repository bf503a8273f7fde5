"""Fails loudly when aiortc or aioice change what engine.media.aiortc_compat relies on."""

from __future__ import annotations

import inspect

import aioice.ice
import aiortc
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpreceiver import decoder_worker
from aiortc.rtp import RtpPacket
from media_peers import new_pc

from engine.media import aiortc_compat


def test_version_check_refuses_unchecked_versions(monkeypatch):
    aiortc_compat.check_versions()
    monkeypatch.setattr(aiortc, "__version__", "9.9.0")
    with pytest.raises(RuntimeError, match="aiortc_compat"):
        aiortc_compat.check_versions()


async def test_receiver_hands_frames_to_its_decoder_queue():
    pc = new_pc()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    assert hasattr(receiver, "_RTCRtpReceiver__decoder_queue")
    assert hasattr(receiver, "_RTCRtpReceiver__decoder_thread")
    source = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put((codec, encoded_frame))" in source
    assert "input_q.get()" in inspect.getsource(decoder_worker)
    assert "if task is None" in inspect.getsource(decoder_worker)
    assert callable(receiver._send_rtcp_pli)
    await pc.close()


async def test_sender_hooks_exist():
    pc = new_pc()
    sender = pc.addTransceiver("video", direction="sendonly").sender
    assert hasattr(sender, "_RTCRtpSender__encoder")
    assert "self.__encoder is None" in inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "self.__encoder.pack(data)" in inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "_handle_rtcp_packet" in inspect.getsource(type(sender.transport)._handle_rtcp_data)
    await pc.close()


async def test_ice_and_dtls_hooks_exist():
    pc = new_pc()
    transceiver = pc.addTransceiver("audio")
    connection = transceiver.sender.transport.transport.iceGatherer._connection
    assert isinstance(connection, aioice.ice.Connection)
    params = inspect.signature(connection.get_component_candidates).parameters
    assert list(params)[:3] == ["component", "addresses", "timeout"]
    assert hasattr(connection, "_protocols")
    assert transceiver.receiver.transport._role == "auto"
    aiortc_compat.answer_as_dtls_server(pc)
    assert transceiver.receiver.transport._role == "server"
    await pc.close()


async def test_bind_ice_announces_loopback():
    pc = new_pc()
    pc.addTransceiver("audio")
    aiortc_compat.bind_ice(pc, ("127.0.0.1",), receive_buffer=1 << 20)
    await pc.setLocalDescription(await pc.createOffer())
    candidates = [line for line in pc.localDescription.sdp.split("\r\n") if line.startswith("a=candidate")]
    assert candidates and all(" 127.0.0.1 " in line for line in candidates)
    await pc.close()


async def test_bind_ice_announces_an_address_the_host_does_not_own():
    pc = new_pc()
    pc.addTransceiver("audio")
    aiortc_compat.bind_ice(pc, ("203.0.113.7",), listen_address="127.0.0.1")
    await pc.setLocalDescription(await pc.createOffer())
    assert " 203.0.113.7 " in pc.localDescription.sdp
    await pc.close()


async def test_fast_path_sender_hooks_exist():
    """``take_over_sender`` and ``send_path`` rely on these names and on who calls what."""
    from aiortc import RTCDtlsTransport, RTCRtpTransceiver
    from aiortc.rtcpeerconnection import RTCPeerConnection as PC

    connect = inspect.getsource(PC._RTCPeerConnection__connect)
    assert "await transceiver.sender.send(self.__localRtp(transceiver))" in connect
    assert "await self.__sender.stop()" in inspect.getsource(RTCRtpTransceiver.stop)
    assert "await recipient._handle_rtcp_packet(packet)" in inspect.getsource(RTCDtlsTransport._handle_rtcp_data)
    assert "self._tx_srtp = Session(tx_policy)" in inspect.getsource(RTCDtlsTransport._setup_srtp)
    assert "active_pair = self._nominated.get(component)" in inspect.getsource(aioice.ice.Connection.sendto)
    assert "self.transport.sendto(data, addr)" in inspect.getsource(aioice.ice.StunProtocol.send_data)
    pc = new_pc()
    sender = pc.addTransceiver("video", direction="sendonly").sender
    assert isinstance(sender._ssrc, int) and isinstance(sender._rtx_ssrc, int)
    transport = sender.transport
    assert callable(transport._register_rtp_sender) and callable(transport._unregister_rtp_sender)
    assert transport._tx_srtp is None  # set up by the DTLS handshake
    assert isinstance(transport.transport._connection, aioice.ice.Connection)
    assert transport.transport._connection._nominated == {}
    await pc.close()


async def test_ice_restart_assumptions():
    """``IceRestart``: the DTLS transport reads and writes through the ICE transport's ``_recv``/``_send``
    on every datagram; aioice's connection delivers into ``_queue``, signals its end with ``None`` there and
    through ``_event_waiter``, which the ICE transport's monitor awaits."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceTransport

    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    ice = pc.getTransceivers()[0].receiver.transport.transport
    assert ice._connection is ice.iceGatherer._connection
    assert {"_recv", "_send", "_connection"} <= set(vars(ice))
    assert "self.transport._recv()" in inspect.getsource(RTCDtlsTransport._recv_next)
    assert "self.transport._send(data)" in inspect.getsource(RTCDtlsTransport._write_ssl)
    assert "self._connection.get_event()" in inspect.getsource(RTCIceTransport._monitor)
    assert "self.__iceGatherer._remote_candidates_end" in inspect.getsource(RTCIceTransport.addRemoteCandidate)
    connection = ice._connection
    for name in ("_queue", "_event_waiter", "_components", "_use_ipv4", "_use_ipv6", "_transport_policy"):
        assert hasattr(connection, name), name
    assert "self._queue.put_nowait((data, component))" in inspect.getsource(aioice.ice.Connection.data_received)
    assert "self._queue.put_nowait(None)" in inspect.getsource(aioice.ice.Connection.close)
    assert "self._event_waiter" in inspect.getsource(aioice.ice.Connection._emit_event)
    await pc.close()


def _packet(seq: int, timestamp: int, marker: bool = False) -> RtpPacket:
    packet = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp)
    packet._data = f"<{seq}>".encode()  # what aiortc's depayloader leaves on each packet
    return packet


async def test_relay_hop_receivers_hand_frames_out_when_whole():
    pc = new_pc()
    video = pc.addTransceiver("video", direction="recvonly").receiver
    audio = pc.addTransceiver("audio", direction="recvonly").receiver
    assert "self.__jitter_buffer.add(packet)" in inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    aiortc_compat.frames_without_delay(video, "video")
    aiortc_compat.frames_without_delay(audio, "audio")
    frames = video._RTCRtpReceiver__jitter_buffer
    assert frames.add(_packet(10, 3000))[1] is None
    assert frames.add(_packet(12, 3000, marker=True))[1] is None  # 11 is missing: not whole yet
    whole = frames.add(_packet(11, 3000))[1]  # retransmitted: the frame is whole at once
    assert (whole.data, whole.timestamp) == (b"<10><11><12>", 3000)
    assert frames.add(_packet(13, 6000))[1] is None
    no_marker = frames.add(_packet(14, 9000))[1]  # a sender without markers: the next frame says it
    assert (no_marker.data, no_marker.timestamp) == (b"<13>", 6000)
    sound = audio._RTCRtpReceiver__jitter_buffer
    assert sound.add(_packet(100, 960))[1].data == b"<100>"
    assert sound.add(_packet(102, 2880))[1].data == b"<102>"  # 101 lost: skipped, not waited for
    assert sound.add(_packet(101, 1920))[1] is None  # late: dropped
    await pc.close()

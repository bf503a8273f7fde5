"""One lossy WHEP viewer for the fan-out bench: it loses 1 % of video packets and must get them back.

Unlike the header-counting viewers (bench/media_viewer.py), this one is a full
aiortc receiver: it decrypts, reassembles frames in aiortc's jitter buffer and
sends NACKs for the gaps, so the relay's retransmission is exercised under the
bench's load. Its DTLS transport drops each video RTP packet whose sequence
number is a multiple of ``1 / loss`` the first time it arrives (retransmissions
get through); a frame reaches ``frames`` only when all its packets are there.

Its share of frames is counted over one set of frames: those whose RTP timestamps lie between the
first and the last complete frame that arrived in the window. Every video frame is one timestamp
step after the previous one, so that span says how many frames were sent in it, and the share is
the complete frames among them (never above 1: a retransmission completes a frame, it adds none).
"""

from __future__ import annotations

import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from engine.media import aiortc_compat


class LossyViewer:
    """A WHEP viewer that drops ``loss`` of its video packets once and counts complete frames."""

    def __init__(self, loss: float = 0.01) -> None:
        self.every = round(1 / loss)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames: list[tuple[float, int]] = []  # (monotonic arrival, RTP timestamp) of each complete frame
        self.dropped = 0
        self.video_packets = 0
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        aiortc_compat.tap_receiver(transceiver.receiver, self._on_frame)
        self.pc.addTransceiver("audio", direction="recvonly")

    def _on_frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        self.frames.append((time.monotonic(), frame.timestamp))

    async def join(self, http: aiohttp.ClientSession, url: str) -> None:
        aiortc_compat.bind_ice(self.pc, ("127.0.0.1",))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await http.post(url, data=self.pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
        answer = await response.text()
        if response.status != 201:
            raise RuntimeError(f"lossy viewer refused: {response.status} {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        video = next(m for m in SessionDescription.parse(answer).media if m.kind == "video")
        self._drop(video.rtp.codecs[0].payloadType)

    def _drop(self, video_pt: int) -> None:
        transport = self.pc.getTransceivers()[0].receiver.transport
        handle = transport._handle_rtp_data
        seen: set[int] = set()

        async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
            if data[1] & 0x7F == video_pt:
                self.video_packets += 1
                seq = int.from_bytes(data[2:4], "big")
                # the first packets pass: no receiver can NACK a loss before its first packet
                if self.video_packets > 100 and seq % self.every == 0 and seq not in seen:
                    seen.add(seq)
                    self.dropped += 1
                    return
            await handle(data, arrival_time_ms)

        transport._handle_rtp_data = on_rtp

    def delivered_between(self, start: float, end: float, step: int) -> tuple[int, int]:
        """(complete frames, frames sent) over the frames that arrived from ``start`` to ``end``.

        ``step`` is the RTP timestamp step between consecutive frames; the receiver's timestamps
        start at 0 and never wrap (engine/media/aiortc_compat.tap_receiver).
        """
        stamps = {ts for arrival, ts in self.frames if start <= arrival < end}
        if not stamps:
            return 0, 0
        sent = (max(stamps) - min(stamps)) // step + 1
        return len(stamps), sent

    async def close(self) -> None:
        await self.pc.close()

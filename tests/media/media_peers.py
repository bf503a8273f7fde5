"""Test peers for the media relay: pre-encoded streams and aiortc clients.

Encoding happens here, on the client side, once per test session; the
server under test only ever sees encoded packets. Every client binds its ICE
sockets on 127.0.0.1 (through the same compat hook as the server), so every
packet stays on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from fractions import Fraction

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpPacket
from aiortc.sdp import SessionDescription

from engine.app import App
from engine.media import aiortc_compat
from engine.media.frames import h264_is_keyframe, vp8_keyframe_size

LOOPBACK = ("127.0.0.1",)


@dataclass(frozen=True)
class Encoded:
    """One pre-encoded frame."""

    data: bytes
    pts: int
    keyframe: bool


@dataclass(frozen=True)
class Stream:
    """A looping pre-encoded stream."""

    kind: str
    frames: tuple[Encoded, ...]
    time_base: Fraction
    duration: int  # one loop, in time_base units


def encode_video(
    codec: str, frames: int = 120, fps: int = 30, gop: int = 60, size: tuple[int, int] = (320, 240)
) -> Stream:
    """A moving test pattern encoded with libx264 or libvpx, keyframes every ``gop`` frames only."""
    width, height = size
    ctx = av.CodecContext.create({"h264": "libx264", "vp8": "libvpx"}[codec], "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = fps
    ctx.gop_size = gop
    ctx.bit_rate = 500_000
    if codec == "h264":
        ctx.profile = "Constrained Baseline"
        ctx.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
        }
    else:
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    y, x = np.mgrid[0:height, 0:width]
    for i in range(frames):
        image = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, (x + y) % 256], axis=-1).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        for packet in ctx.encode(frame):
            out.append(Encoded(bytes(packet), int(packet.pts), bool(packet.is_keyframe)))
    for packet in ctx.encode(None):
        out.append(Encoded(bytes(packet), int(packet.pts), bool(packet.is_keyframe)))
    return Stream("video", tuple(out), Fraction(1, fps), frames)


def encode_opus(seconds: float = 2.0) -> Stream:
    """A 440 Hz tone in 20 ms Opus packets."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format = 48000, "stereo", "s16"
    ctx.time_base = Fraction(1, 48000)
    out = []
    samples = 960
    for i in range(int(seconds * 50)):
        t = (np.arange(samples) + i * samples) / 48000
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * samples
        frame.time_base = ctx.time_base
        for packet in ctx.encode(frame):
            out.append(Encoded(bytes(packet), int(packet.pts), False))
    first = out[0].pts
    frames = tuple(Encoded(e.data, e.pts - first, False) for e in out)
    return Stream("audio", frames, Fraction(1, 48000), len(frames) * samples)


class PacketTrack(MediaStreamTrack):
    """Plays a pre-encoded stream in real time, looping, as ``av.Packet``s."""

    def __init__(self, stream: Stream) -> None:
        super().__init__()
        self.kind = stream.kind
        self._stream = stream
        self._index = 0
        self._start: float | None = None
        self.sent = 0
        self.flowing = asyncio.Event()
        self.flowing.set()

    def pause(self) -> None:
        """Stop sending frames (as a crashed or frozen encoder does), the connection staying up."""
        self.flowing.clear()

    async def recv(self) -> av.Packet:
        await self.flowing.wait()
        stream = self._stream
        loop, index = divmod(self._index, len(stream.frames))
        self._index += 1
        encoded = stream.frames[index]
        pts = encoded.pts + loop * stream.duration
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + float(pts * stream.time_base) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(encoded.data)
        packet.pts = pts
        packet.time_base = stream.time_base
        self.sent += 1
        return packet


class FrameLog:
    """Encoded frames one client received, read without decoding."""

    def __init__(self) -> None:
        self.frames: dict[str, list[tuple[float, bytes, bool]]] = {"audio": [], "video": []}
        self.codecs: dict[str, str] = {}
        self.arrived = asyncio.Event()

    def handler(self, kind: str):
        def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            self.codecs[kind] = codec.name
            keyframe = False
            if kind == "video":
                name = codec.name.lower()
                keyframe = (
                    h264_is_keyframe(frame.data)
                    if name == "h264"
                    else vp8_keyframe_size(frame.data) is not None
                )
            self.frames[kind].append((time.monotonic(), frame.data, keyframe))
            if kind == "video":
                self.arrived.set()

        return on_frame

    def count(self, kind: str) -> int:
        return len(self.frames[kind])


def new_pc() -> RTCPeerConnection:
    """A client peer connection that contacts no STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def post_offer(
    session: aiohttp.ClientSession, url: str, sdp: str, token: str | None = None
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await session.post(url, data=sdp, headers=headers)
    await response.read()
    return response


class Publisher:
    """A WHIP publisher sending pre-encoded streams, like OBS (it ignores PLI)."""

    def __init__(self, *streams: Stream, obs_offer: bool = False, also_offer: tuple[str, ...] = ()) -> None:
        self.pc = new_pc()
        self.tracks = [PacketTrack(s) for s in streams]
        self.obs_offer = obs_offer
        self.also_offer = also_offer  # video codecs offered before the stream's own, as browsers offer several
        self.location: str | None = None
        self.keyframe_requests = 0
        self.nacks: list[int] = []

    def _on_pli(self) -> None:
        """Counted and ignored, as OBS does."""
        self.keyframe_requests += 1

    def offer_sdp(self) -> str:
        sdp = self.pc.localDescription.sdp
        return obs_style(sdp) if self.obs_offer else sdp

    async def prepare(self, codecs: dict[str, str]) -> str:
        for track in self.tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            aiortc_compat.tap_sender(transceiver.sender, codecs[track.kind], self._on_pli, self.nacks.append)
            names = [codecs[track.kind].lower()]
            if track.kind == "video":
                names = [n.lower() for n in self.also_offer] + names
            capabilities = transceiver.sender.getCapabilities(track.kind).codecs
            transceiver.setCodecPreferences([c for n in names for c in capabilities if c.name.lower() == n])
        aiortc_compat.bind_ice(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.offer_sdp()

    async def publish(
        self, http: aiohttp.ClientSession, base: str, room: str, key: str, codecs: dict[str, str]
    ) -> aiohttp.ClientResponse:
        sdp = await self.prepare(codecs)
        response = await post_offer(http, f"{base}/whip/{room}", sdp, key)
        if response.status == 201:
            self.location = response.headers["Location"]
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=await response.text(), type="answer")
            )
        return response

    async def close(self) -> None:
        await self.pc.close()


async def broadcast(engine: App, http: aiohttp.ClientSession, video: Stream, audio: Stream) -> Publisher:
    """A publisher streaming ``video`` (H264) and ``audio`` (Opus) into an in-process engine's room
    "demo" over WHIP."""
    publisher = Publisher(video, audio)
    response = await publisher.publish(http, f"http://127.0.0.1:{engine.http_port}", "demo",
                                       engine.rooms.get("demo").stream_key, {"video": "H264", "audio": "opus"})
    assert response.status == 201
    return publisher


class Viewer:
    """A viewer; with ``decode`` it decodes like a player, else it reads encoded frames only.

    With ``drop_every`` it loses each video RTP packet whose sequence number is
    a multiple of it, the first time it arrives (retransmissions get through;
    the first 30 packets all pass),
    so its frames are complete only if the relay answers its NACKs. It records
    the RTCP it receives and the last RTP timestamp per SSRC.
    """

    def __init__(
        self, kinds: tuple[str, ...] = ("audio", "video"), decode: bool = False, drop_every: int = 0
    ) -> None:
        self.pc = new_pc()
        self.drop_every = drop_every
        self.dropped = 0
        self.video_packets = 0
        self.rtcp: list[tuple[float, object]] = []
        self.last_rtp: dict[int, tuple[float, int]] = {}
        self.log = FrameLog()
        self.decoded: list[av.VideoFrame] = []
        self.first_decoded = asyncio.Event()
        self.created = time.monotonic()
        self._decode = decode
        self._tasks: list[asyncio.Task[None]] = []
        for kind in kinds:
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            if not decode:
                aiortc_compat.tap_receiver(transceiver.receiver, self.log.handler(kind))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if decode and track.kind == "video":
                self._tasks.append(asyncio.ensure_future(self._pull(track)))

    async def _pull(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.decoded.append(frame)
                self.first_decoded.set()

    async def offer(self) -> str:
        aiortc_compat.bind_ice(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        video = [m for m in SessionDescription.parse(answer).media if m.kind == "video"]
        self._watch_transport(video[0].rtp.codecs[0].payloadType if video else -1)

    def _watch_transport(self, video_pt: int) -> None:
        """Test-side hooks on this client's DTLS transport (aiortc private methods, client only)."""
        transport = self.pc.getTransceivers()[0].receiver.transport
        handle_rtp, handle_rtcp = transport._handle_rtp_data, transport._handle_rtcp_data
        seen: set[int] = set()

        async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
            seq = int.from_bytes(data[2:4], "big")
            video = data[1] & 0x7F == video_pt
            if video:
                self.video_packets += 1
            # the first packets all pass: no receiver can NACK a loss before its first packet
            if video and self.video_packets > 30 and self.drop_every and seq % self.drop_every == 0 and seq not in seen:
                seen.add(seq)
                self.dropped += 1
                return
            self.last_rtp[int.from_bytes(data[8:12], "big")] = (time.time(), int.from_bytes(data[4:8], "big"))
            await handle_rtp(data, arrival_time_ms)

        async def on_rtcp(data: bytes) -> None:
            with contextlib.suppress(ValueError):
                self.rtcp.extend((time.time(), packet) for packet in RtcpPacket.parse(data))
            await handle_rtcp(data)

        transport._handle_rtp_data = on_rtp
        transport._handle_rtcp_data = on_rtcp

    async def whep(self, http: aiohttp.ClientSession, base: str, room: str) -> aiohttp.ClientResponse:
        response = await post_offer(http, f"{base}/whep/{room}", await self.offer())
        if response.status == 201:
            await self.accept(await response.text())
        return response

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def restart_ice(
    pc: RTCPeerConnection, http: aiohttp.ClientSession, url: str, if_match: str, timeout: float = 10.0
) -> aiohttp.ClientResponse:
    """The client's half of an ICE restart over ``PATCH`` (RFC 9725 section 4.4).

    A new ICE connection (new ufrag and password, new loopback sockets)
    gathers, its fragment goes to the session ``url``; on ``200`` the
    server's new credentials and candidates complete the restart, and the
    client's previous ICE connection (and its sockets) is closed. Any other
    status leaves the client on its previous path. Returns the response.
    """
    restart = aiortc_compat.IceRestart(pc, LOOPBACK)
    candidates = await restart.gather()
    ufrag, pwd = restart.local_parameters
    first = pc.getTransceivers()[0]
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"m={first.kind} 9 UDP/TLS/RTP/SAVPF 0", f"a=mid:{first.mid}"]
    lines += [f"a={c}" for c in candidates] + ["a=end-of-candidates"]
    headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": if_match}
    response = await http.patch(url, data="\r\n".join(lines) + "\r\n", headers=headers)
    body = await response.text()
    if response.status != 200:
        await restart.abort()
        return response
    remote_ufrag = re.search(r"^a=ice-ufrag:(\S+)", body, re.M)
    remote_pwd = re.search(r"^a=ice-pwd:(\S+)", body, re.M)
    assert remote_ufrag and remote_pwd, body
    remote = re.findall(r"^a=(candidate:.+?)\s*$", body, re.M)
    await restart.begin(remote_ufrag.group(1), remote_pwd.group(1), remote, "a=end-of-candidates" in body)
    assert await restart.connect(timeout), "the client's restarted ICE connection did not connect"
    return response


def ice_path(pc: RTCPeerConnection) -> tuple[tuple[str, int], tuple[str, int]]:
    """(local, remote) address of the ICE pair carrying ``pc``'s media (test-side look at aioice)."""
    pair = pc.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
    return pair.local_addr, pair.remote_addr


def obs_style(sdp: str) -> str:
    """Rewrite an aiortc offer the way OBS (libdatachannel) writes its WHIP offer.

    No candidates, ICE credentials at session level, ``a=group:LS``, Opus
    spelled ``OPUS`` on payload type 111, H264 on payload type 96.
    """
    lines = sdp.strip().split("\r\n")
    ufrag = next(line for line in lines if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in lines if line.startswith("a=ice-pwd:"))
    out: list[str] = []
    first_media = next(i for i, line in enumerate(lines) if line.startswith("m="))
    mids = [line[6:] for line in lines if line.startswith("a=mid:")]
    for i, line in enumerate(lines):
        if i == first_media:
            out += [ufrag, pwd, "a=group:LS " + " ".join(mids)]
        if line.startswith(("a=candidate:", "a=end-of-candidates", "a=ice-ufrag:", "a=ice-pwd:")):
            continue
        if line.startswith("c=IN IP4") and i > first_media:
            out.append("c=IN IP4 0.0.0.0")
            continue
        out.append(line)
    text = "\r\n".join(out) + "\r\n"
    text = re.sub(r"a=rtpmap:(\d+) opus/", r"a=rtpmap:\1 OPUS/", text)
    return _renumber(text)


def _renumber(sdp: str) -> str:
    """Move Opus to PT 111 and H264 to PT 96 (OBS's numbers), keeping others."""
    mapping: dict[str, str] = {}
    for pt, name in re.findall(r"a=rtpmap:(\d+) (\w+)/", sdp):
        if name.upper() == "OPUS":
            mapping[pt] = "111"
        elif name.upper() == "H264":
            mapping.setdefault(pt, "96")
    if not mapping:
        return sdp
    taken = set(mapping.values())
    for pt in re.findall(r"a=rtpmap:(\d+) ", sdp):
        if pt not in mapping and pt in taken:
            mapping[pt] = str(100 + int(pt) % 20)

    def swap(match: re.Match[str]) -> str:
        return mapping.get(match.group(0), match.group(0))

    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            head, _, fmts = line.partition(" UDP/TLS/RTP/SAVPF ")
            line = f"{head} UDP/TLS/RTP/SAVPF " + " ".join(mapping.get(p, p) for p in fmts.split())
        elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            line = re.sub(r"(?<=:)\d+", swap, line, count=1)
            line = re.sub(r"apt=(\d+)", lambda m: "apt=" + mapping.get(m.group(1), m.group(1)), line)
        out.append(line)
    return "\r\n".join(out)

"""The fan-out bench's publisher stream: encoded once, cached on disk, replayed in real time.

The server under test must never encode, and the bench must not spend its
own CPU encoding while it measures, so the 1280x720 H264 (about 2.5 Mbit/s,
30 fps, a keyframe every 2 s like OBS's usual setting) and Opus streams are
encoded once with libx264/libopus, pickled, and replayed from memory.

Viewers never decode either: they recognise a frame by its RTP packet count
and payload bytes (and those of the frames after it), so ``signature``
gives, for each frame of the loop, what the server's packetizer turns it into.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.codecs.h264 import H264Encoder

from engine.media.rtp import packetize_h264

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000


@dataclass(frozen=True)
class Stream:
    """A loop of encoded frames: payloads, their pts in ``time_base`` and keyframe flags."""

    kind: str
    payloads: tuple[bytes, ...]
    pts: tuple[int, ...]
    keyframes: tuple[bool, ...]
    time_base: Fraction
    duration: int  # one loop, in time_base units

    @property
    def bitrate(self) -> float:
        seconds = float(self.duration * self.time_base)
        return sum(len(p) for p in self.payloads) * 8 / seconds


@dataclass(frozen=True)
class StreamSpec:
    """What to encode; part of the cache key."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    seconds: int = 10
    gop_seconds: float = 2.0
    kbps: int = 2500

    @property
    def frames(self) -> int:
        return self.fps * self.seconds

    @property
    def gop(self) -> int:
        return int(self.fps * self.gop_seconds)


def _texture(spec: StreamSpec) -> np.ndarray:
    """A fixed detailed picture, larger than the frame, that the video pans across.

    Panning a fixed texture gives x264 what a camera gives it: keyframes that
    cost several times a predicted frame, and predicted frames that still
    change every block.
    """
    rng = np.random.default_rng(4)
    height, width = spec.height + 2 * spec.frames, spec.width + 4 * spec.frames
    coarse = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]


def _picture(spec: StreamSpec, texture: np.ndarray, index: int) -> av.VideoFrame:
    image = np.ascontiguousarray(texture[2 * index : 2 * index + spec.height, 4 * index : 4 * index + spec.width])
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


def encode_h264(spec: StreamSpec) -> Stream:
    """Constant-bitrate constrained-baseline H264 with a fixed keyframe interval and no scene cuts."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = spec.width, spec.height, "yuv420p"
    ctx.time_base = Fraction(1, spec.fps)
    ctx.framerate = spec.fps
    ctx.gop_size = spec.gop
    ctx.bit_rate = spec.kbps * 1000
    ctx.profile = "Constrained Baseline"
    ctx.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": (
            f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:repeat-headers=1:"
            f"vbv-maxrate={spec.kbps}:vbv-bufsize={spec.kbps}:nal-hrd=cbr"
        ),
    }
    texture = _texture(spec)
    packets: list[av.Packet] = []
    for index in range(spec.frames):
        frame = _picture(spec, texture, index)
        frame.pts = index
        frame.time_base = ctx.time_base
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    to_clock = VIDEO_CLOCK // spec.fps
    return Stream(
        "video",
        tuple(bytes(p) for p in packets),
        tuple(int(p.pts) * to_clock for p in packets),
        tuple(bool(p.is_keyframe) for p in packets),
        Fraction(1, VIDEO_CLOCK),
        spec.frames * to_clock,
    )


def encode_opus(seconds: int) -> Stream:
    """A 440 Hz tone in 20 ms stereo Opus packets."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format = AUDIO_CLOCK, "stereo", "s16"
    ctx.time_base = Fraction(1, AUDIO_CLOCK)
    ctx.bit_rate = 64000
    samples = 960
    packets: list[av.Packet] = []
    for index in range(seconds * 50):
        t = (np.arange(samples) + index * samples) / AUDIO_CLOCK
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = index * samples
        frame.time_base = ctx.time_base
        packets += ctx.encode(frame)
    first = int(packets[0].pts)
    return Stream(
        "audio",
        tuple(bytes(p) for p in packets),
        tuple(int(p.pts) - first for p in packets),
        tuple(False for _ in packets),
        Fraction(1, AUDIO_CLOCK),
        len(packets) * samples,
    )


def load(spec: StreamSpec, cache_dir: Path) -> tuple[Stream, Stream]:
    """The (video, audio) pair for ``spec``, encoded on the first call and read from ``cache_dir`` after."""
    key = hashlib.sha1(repr((spec, av.__version__)).encode()).hexdigest()[:12]
    path = cache_dir / f"media-fanout-{key}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    streams = (encode_h264(spec), encode_opus(spec.seconds))
    path.write_bytes(pickle.dumps(streams))
    return streams


def signature(stream: Stream, path: str = "stock") -> list[tuple[int, int]]:
    """Per frame of the loop: (RTP packets, payload bytes) as the server's packetizer sends it.

    H264 goes through aiortc's packetizer on the stock path (the server
    re-packetizes every frame per viewer) and through engine/media/rtp.py on
    the fast path (once per room); an Opus packet is one RTP payload as it is.
    """
    if stream.kind == "audio":
        return [(1, len(payload)) for payload in stream.payloads]
    if path == "fast":
        fast = [packetize_h264(payload) for payload in stream.payloads]
        return [(len(payloads), sum(map(len, payloads))) for payloads in fast]
    packer = H264Encoder()
    out = []
    for payload, pts in zip(stream.payloads, stream.pts, strict=True):
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = stream.time_base
        payloads, _ = packer.pack(packet)
        out.append((len(payloads), sum(len(p) for p in payloads)))
    return out


class ReplayTrack(MediaStreamTrack):
    """Plays a ``Stream`` in real time, looping, and logs when each frame left.

    ``sent[i]`` is the monotonic time frame ``i`` (counting across loops) was
    handed to the sender, which packetizes and sends it without yielding. The
    clock starts at the first ``recv``, when the connection is up, so nothing
    is sent in a catch-up burst.
    """

    def __init__(self, stream: Stream) -> None:
        super().__init__()
        self.kind = stream.kind
        self._stream = stream
        self._start: float | None = None
        self.sent: list[float] = []

    async def recv(self) -> av.Packet:
        stream = self._stream
        index = len(self.sent)
        loop, position = divmod(index, len(stream.payloads))
        pts = stream.pts[position] + loop * stream.duration
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + float(pts * stream.time_base) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(stream.payloads[position])
        packet.pts = pts
        packet.time_base = stream.time_base
        self.sent.append(time.monotonic())
        return packet

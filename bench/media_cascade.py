"""Media cascade bench: what one hop through an edge node adds, and what an edge costs.

Two ``livecart serve`` nodes share one Redis (their own key prefix): node A (the origin) and
node B (an edge), both pinned to core 0 with ``taskset`` (a 2-core machine cannot give each its
own core and keep one for the load); this process (the publisher and every viewer) runs on
core 1. The publisher sends a pre-encoded 1280x720 ~2.5 Mbit/s H264 + Opus stream over WHIP to A
(bench/media_stream.py); viewers are aiortc peer connections reading encoded frames (no decoding).

Phases, each a steady ``--window`` after a settling pause:

1. the publisher alone on A: A's CPU (the baseline);
2. ``--viewers`` viewers on A: A's CPU per viewer = (CPU - baseline) / N;
3. as many viewers on B, which pulls the room from A once: A's CPU for that one edge = CPU in
   phase 3 - CPU in phase 2; B's CPU per viewer = B's CPU / N (its pull's ingest included, as A's
   figures include the publisher's ingest only through the baseline).

In phase 3 every viewer on both nodes logs each video frame's arrival (when aiortc's jitter buffer
hands it out, the same for both); the lag of a frame is its arrival minus the moment the publisher
handed it to its sender (one machine, one monotonic clock). Frames are recognised by their payload
(the NAL units of each frame of the loop are distinct). Added latency per hop = lag through the edge minus lag direct
from the origin, at p50 and at p99. Frames delivered = frames a viewer got of those the publisher
sent during the window.

    python bench/media_cascade.py --viewers 8 --window 20
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from engine.media import aiortc_compat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import fmt, free_port, markdown_table, percentile, process_cpu, record, write_results  # noqa: E402
from media_stream import ReplayTrack, Stream, StreamSpec, load  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOM = "cascade"
ADMIN = "bench-admin"
LOOPBACK = ("127.0.0.1",)


@dataclass
class Node:
    """One ``livecart serve`` process."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_node(name: str, workdir: Path, redis_url: str, prefix: str) -> Node:
    http_port, ws_port = free_port(), free_port()
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "engine.cli", "serve", "--http-port", str(http_port),
         "--ws-port", str(ws_port), "--data-dir", str(workdir / name), "--redis-url", redis_url,
         "--redis-prefix", prefix, "--node-id", name, "--admin-key", ADMIN, "--announce", "127.0.0.1",
         "--no-demo-catalog", "--demo-room", "", "--log-level", "warning", "--node-heartbeat", "0.5"],
        stdout=log, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")},
    )
    return Node(name, proc, f"http://127.0.0.1:{http_port}")


async def ready(http: aiohttp.ClientSession, nodes: list[Node]) -> None:
    async with asyncio.timeout(60):
        for node in nodes:
            while True:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"node {node.name} exited")
                try:
                    async with http.get(node.base + "/healthz") as response:
                        listed = {n["id"] for n in (await response.json())["node"]["nodes"]}
                        if {n.name for n in nodes} <= listed:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)


class Publisher:
    """WHIP publisher replaying the encoded stream in real time (it logs when each frame left)."""

    def __init__(self, video: Stream, audio: Stream) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = ReplayTrack(video)
        self.audio = ReplayTrack(audio)

    async def publish(self, http: aiohttp.ClientSession, node: Node, key: str) -> None:
        for track, codec in ((self.audio, "opus"), (self.video, "h264")):
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            aiortc_compat.tap_sender(transceiver.sender, codec, lambda: None, lambda _: None)
            caps = [c for c in RTCRtpSender.getCapabilities(track.kind).codecs if c.name.lower() == codec]
            transceiver.setCodecPreferences(caps)
        aiortc_compat.bind_ice(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
        async with http.post(f"{node.base}/whip/{ROOM}", data=self.pc.localDescription.sdp, headers=headers) as r:
            answer = await r.text()
            if r.status != 201:
                raise RuntimeError(f"WHIP publish failed: {r.status} {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


def frame_key(data: bytes) -> bytes:
    """What identifies an H264 frame whatever its start codes (a depacketizer writes 4-byte ones)."""
    return hashlib.sha1(b"|".join(nal for nal in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", data) if nal)).digest()


@dataclass
class Viewer:
    """A WHEP viewer logging (arrival, loop position) of each video frame it gets."""

    node: str
    index: dict[bytes, int]
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    frames: list[tuple[float, int]] = field(default_factory=list)

    def _on_video(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        position = self.index.get(frame_key(frame.data))
        if position is not None:
            self.frames.append((time.monotonic(), position))

    async def watch(self, http: aiohttp.ClientSession, node: Node) -> None:
        self.pc.addTransceiver("audio", direction="recvonly")
        video = self.pc.addTransceiver("video", direction="recvonly")
        aiortc_compat.tap_receiver(video.receiver, self._on_video)
        aiortc_compat.bind_ice(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(f"{node.base}/whep/{ROOM}", data=self.pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"}) as r:
            answer = await r.text()
            if r.status != 201:
                raise RuntimeError(f"WHEP on {node.name} failed: {r.status} {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


def lags(viewer: Viewer, sent: list[float], loop: int, start: float, stop: float) -> tuple[list[float], int]:
    """(lag in ms of each frame that arrived in [start, stop], frames of that window it got).

    A frame at loop position p was sent at ``sent[k * loop + p]`` for some loop k: the latest
    such send before its arrival is the one that arrived.
    """
    out, got = [], set()
    for arrived, position in viewer.frames:
        if not start <= arrived <= stop:
            continue
        k = max((i for i in range(position, len(sent), loop) if sent[i] <= arrived), default=None)
        if k is None:
            continue
        out.append((arrived - sent[k]) * 1000)
        got.add(k)
    return out, len(got)


async def window(seconds: float, *nodes: Node) -> dict[str, float]:
    """Each node's CPU seconds over the next ``seconds``."""
    before = {node.name: process_cpu(node.pid) for node in nodes}
    await asyncio.sleep(seconds)
    return {node.name: process_cpu(node.pid) - before[node.name] for node in nodes}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    video, audio = load(StreamSpec(), Path(tempfile.gettempdir()) / "livecart-bench")
    index = {frame_key(payload): i for i, payload in enumerate(video.payloads)}
    if len(index) != len(video.payloads):
        raise RuntimeError("the stream's frames are not all distinct: lags could not be matched")
    prefix = f"bench-cascade-{secrets.token_hex(4)}:"
    workdir = Path(tempfile.mkdtemp(prefix="livecart-cascade-"))
    nodes = [start_node(name, workdir, args.redis_url, prefix) for name in ("node-a", "node-b")]
    origin, edge = nodes
    viewers: list[Viewer] = []
    publisher = Publisher(video, audio)
    try:
        async with aiohttp.ClientSession() as http:
            await ready(http, nodes)
            async with http.post(origin.base + "/api/rooms", json={"id": ROOM},
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                key = (await r.json())["stream_key"]
            await publisher.publish(http, origin, key)
            await asyncio.sleep(args.settle)
            base = await window(args.window, origin)

            direct = [Viewer("node-a", index) for _ in range(args.viewers)]
            for viewer in direct:
                await viewer.watch(http, origin)
            viewers += direct
            await asyncio.sleep(args.settle)
            with_viewers = await window(args.window, origin)

            through_edge = [Viewer("node-b", index) for _ in range(args.viewers)]
            await asyncio.gather(*(viewer.watch(http, edge) for viewer in through_edge))
            viewers += through_edge
            await asyncio.sleep(args.settle)
            start = time.monotonic()
            with_edge = await window(args.window, origin, edge)
            stop = time.monotonic()
    finally:
        for viewer in viewers:
            await viewer.pc.close()
        await publisher.pc.close()
        for node in nodes:
            node.proc.terminate()
        for node in nodes:
            node.proc.wait(30)
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()

    sent = publisher.video.sent
    loop = len(video.payloads)
    # the lag of a frame sent in the window; frames delivered over those sent in it (less the last 0.5 s)
    expected = sum(1 for t in sent if start <= t <= stop - 0.5)
    per_viewer: dict[str, list[dict[str, Any]]] = {"node-a": [], "node-b": []}
    pooled: dict[str, list[float]] = {"node-a": [], "node-b": []}
    for viewer in viewers:
        values, got = lags(viewer, sent, loop, start, stop)
        pooled[viewer.node] += values
        per_viewer[viewer.node].append({"frames": got, "delivered": min(1.0, got / expected) if expected else 0.0,
                                        "p50": percentile(values, 50), "p99": percentile(values, 99)})
    cpu_viewer_origin = (with_viewers["node-a"] - base["node-a"]) / args.window / args.viewers
    cpu_edge_on_origin = (with_edge["node-a"] - with_viewers["node-a"]) / args.window
    cpu_viewer_edge = with_edge["node-b"] / args.window / args.viewers
    # the edge's ingest (its pull) costs about what the origin's publisher ingest costs: the baseline
    cpu_viewer_edge_less_ingest = (with_edge["node-b"] - base["node-a"]) / args.window / args.viewers
    return {
        "viewers_per_node": args.viewers, "window_s": args.window, "frames_sent_in_window": expected,
        "cpu_origin_baseline": base["node-a"] / args.window,
        "cpu_per_viewer_origin": cpu_viewer_origin,
        "cpu_of_one_edge_on_origin": cpu_edge_on_origin,
        "cpu_per_viewer_edge": cpu_viewer_edge,
        "cpu_per_viewer_edge_less_ingest": cpu_viewer_edge_less_ingest,
        "lag_direct_p50": percentile(pooled["node-a"], 50), "lag_direct_p99": percentile(pooled["node-a"], 99),
        "lag_edge_p50": percentile(pooled["node-b"], 50), "lag_edge_p99": percentile(pooled["node-b"], 99),
        "viewers": per_viewer,
    }


def report(result: dict[str, Any]) -> str:
    def added(q: str) -> float | None:
        edge, direct = result[f"lag_edge_{q}"], result[f"lag_direct_{q}"]
        return None if edge is None or direct is None else edge - direct

    delivered = {node: min((v["delivered"] for v in viewers), default=0.0) * 100
                 for node, viewers in result["viewers"].items()}
    rows = [[
        result["viewers_per_node"],
        f"{fmt(result['lag_direct_p50'])} / {fmt(result['lag_direct_p99'])}",
        f"{fmt(result['lag_edge_p50'])} / {fmt(result['lag_edge_p99'])}",
        f"{fmt(added('p50'))} / {fmt(added('p99'))}",
        fmt(result["cpu_per_viewer_origin"] * 100, 2), fmt(result["cpu_of_one_edge_on_origin"] * 100, 2),
        f"{fmt(result['cpu_per_viewer_edge'] * 100, 2)} / {fmt(result['cpu_per_viewer_edge_less_ingest'] * 100, 2)}",
        f"{fmt(delivered['node-a'])} / {fmt(delivered['node-b'])}",
    ]]
    header = ["viewers per node", "lag direct p50 / p99 ms", "lag through edge p50 / p99 ms",
              "added per hop p50 / p99 ms", "origin CPU % per viewer", "origin CPU % for the edge",
              "edge CPU % per viewer: all / less one ingest", "frames delivered min % origin / edge"]
    note = ("Both nodes on core 0, publisher and viewers on core 1. Lag: publisher hands a frame to its "
            "sender -> a viewer's jitter buffer hands it out. Edge CPU per viewer: all its CPU over N, and "
            "less the origin's publisher-only CPU (one stream's ingest) over N.")
    return note + "\n\n" + markdown_table(header, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=8, help="viewers on each node")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of each measured window")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds before each window")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--name", default="media_cascade", help="results file name (bench/results/NAME.md)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    run_record = record("media_cascade")
    result = asyncio.run(run(args))
    markdown = report(result)
    print(markdown)
    write_results(args.name, run_record, markdown, result)


if __name__ == "__main__":
    main()

"""Media cascade bench: what one hop through an edge node adds, and what an edge costs.

Two ``livecart serve`` nodes share one Redis (their own key prefix): node A (the origin) and
node B (an edge), both pinned to core 0 with ``taskset`` (a 2-core machine cannot give each its
own core and keep one for the load); the load runs on core 1. The publisher sends a pre-encoded
1280x720 ~2.5 Mbit/s H264 + Opus stream over WHIP to A (bench/media_stream.py).

Viewers are of two kinds, ``--viewers`` in all on each node:

- ``--measuring`` per node are full aiortc peer connections in this process (beside the
  publisher) reading encoded frames (no decoding): they give the lags and frames delivered.
- the rest are counting viewers, run by worker processes (bench/media_viewer.py, started with
  media_fanout's ``start_workers``, ``--per-process`` each): real aiortc peer connections that
  negotiate WHEP, ICE and DTLS as any viewer does, so a node does the same work for each, but
  whose ICE sockets count each RTP packet from its clear header and drop it, skipping SRTP,
  RTP parsing and the jitter buffer. With 16 full viewers per node the load's core fell behind
  (lags of seconds); a counting viewer costs a few microseconds per packet.

What the nodes see from a counting viewer: STUN consent checks, DTLS and the SRTCP sender
reports still reach aiortc, so the session lives as long as a full viewer's. Unlike a full
viewer it sends no receiver reports, REMB or NACKs (aiortc's receiver reports only the streams
whose RTP it parsed). A node only records what receiver reports and REMB say (loss, jitter, RTT
and bitrate for its metrics; nothing it forwards depends on them), and NACKs only follow losses,
which loopback has none of; an RTCP packet a second or two against some 250 RTP packets a
second sent to each viewer is within the noise of the CPU figures. The bench checks each
counting viewer still got the stream: its video packets in the last window over the median
measuring viewer's on the same node (``counting rate min %``; a run where one is under 97 % is
flagged).

Phases of one run:

1. the publisher alone on A, a ``--window``: A's CPU (the baseline);
2. ``--pairs`` pairs of ``--pair-window`` windows, one with the edge on and one with it off, A
   holding the publisher only. On: B's measuring viewers join (fresh peer connections each time),
   so B pulls the room from A; the window starts ``--pair-settle`` after each of them got frames
   and A feeds the edge. Off: they leave (peer connection closed, WHEP session deleted), B lets go
   of its pull after its ``--edge-linger`` (short, B only); the window starts ``--pair-settle``
   after A's and B's /healthz no longer show the pull. A's CPU for that one edge = the median over
   pairs of (A's CPU on - A's CPU off), while B itself does little on the shared core (one ingest
   and a few viewers). The two windows of a pair are adjacent and their order alternates (on/off,
   off/on, ...: consecutive pairs share a state, which also halves the joins and leaves), so a
   steady drift cancels out over pairs. A has no viewers of its own in these windows: with N
   viewers, A's CPU moved by a few % of a core from one 10 s window to the next (their RTCP,
   keyframes, the loop's batching), against well under 1 % for an edge, and the pairs' differences
   spread from -1 % to +3 % of a core; an edge costs A the same output whoever else watches.
   Then as many pairs, measured the same way, with one full viewer (a measuring viewer, RTCP and
   all) joining and leaving A directly: what the target compares an edge with is one viewer, and
   the per-viewer figure of phase 3 is mostly counting viewers, which send A no RTCP;
3. ``--viewers`` viewers on A, a ``--window``: A's CPU per viewer = (CPU - baseline) / N;
4. the edge on and the rest of B's viewers (as many as A's in all), a ``--window``: A's CPU for
   the edge again (phase 4 - phase 3), now beside B serving N viewers on the same core, which
   takes core 0's time and caches from A (an effect of this machine's two cores, not of A's work:
   A sends the edge one stream either way); B's CPU per viewer = B's CPU / N (its pull's ingest
   included, as A's figures include the publisher's ingest only through the baseline).

In phase 4 every measuring viewer on both nodes logs each video frame's arrival (when aiortc's
jitter buffer hands it out, the same for both); the lag of a frame is its arrival minus the moment
the publisher handed it to its sender (one machine, one monotonic clock). Frames are recognised by
their payload (the NAL units of each frame of the loop are distinct). Added latency per hop = lag
through the edge minus lag direct from the origin, at p50 and at p99. Frames delivered = frames a
measuring viewer got of those the publisher sent during the window.

``--runs`` repeats the whole run (fresh nodes each time); the table has a row per run and a row
of medians (each figure's median over the runs; the added latency of that row is computed from
its own median lags). Core 1's busy share in the last window is shown: near 100 % the load, not
the nodes, limits the figures.

On a quiet 2-core machine a run takes about 3 min (three 20 s windows, four pairs of 10 s ones,
settling, node start):

    python bench/media_cascade.py --viewers 24 --measuring 2 --runs 3 --window 20 --pairs 4 --pair-window 10
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import uvloop
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from engine.media import aiortc_compat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (  # noqa: E402
    CoreWindow,
    fmt,
    free_port,
    markdown_table,
    median,
    percentile,
    process_cpu,
    record,
    write_results,
)
from media_fanout import collect_workers, sleep_until, start_workers  # noqa: E402
from media_stream import ReplayTrack, Stream, StreamSpec, load  # noqa: E402
from media_viewer import Record, record_headers, video_payload_types  # noqa: E402

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


def start_node(name: str, workdir: Path, redis_url: str, prefix: str, *extra: str) -> Node:
    """Start a node pinned to core 0; ``extra`` are more ``serve`` flags."""
    http_port, ws_port = free_port(), free_port()
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "engine.cli", "serve", "--http-port", str(http_port),
         "--ws-port", str(ws_port), "--data-dir", str(workdir / name), "--redis-url", redis_url,
         "--redis-prefix", prefix, "--node-id", name, "--admin-key", ADMIN, "--announce", "127.0.0.1",
         "--no-demo-catalog", "--demo-room", "", "--log-level", "warning", "--node-heartbeat", "0.5", *extra],
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
    """A measuring WHEP viewer: logs (arrival, loop position) of each video frame it gets, and the
    RTP headers its socket receives (as a counting viewer's, to compare their packet rates)."""

    node: str
    index: dict[bytes, int]
    pc: RTCPeerConnection = field(default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    frames: list[tuple[float, int]] = field(default_factory=list)
    headers: Record = field(default_factory=lambda: Record(-1))
    location: str | None = None  # its WHEP session resource, to delete when it leaves

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
        video_pts: set[int] = set()
        record_headers(self.pc, self.headers, video_pts, drop=False)
        async with http.post(f"{node.base}/whep/{ROOM}", data=self.pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"}) as r:
            answer = await r.text()
            if r.status != 201:
                raise RuntimeError(f"WHEP on {node.name} failed: {r.status} {answer}")
            self.location = r.headers.get("Location")
        video_pts.update(video_payload_types(answer))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def leave(self, http: aiohttp.ClientSession, node: Node) -> None:
        """Close the peer connection and delete the WHEP session, as a page that stops watching does."""
        await self.pc.close()
        if self.location is not None:
            async with http.delete(node.base + self.location) as r:
                if r.status not in (200, 204, 404):
                    raise RuntimeError(f"WHEP DELETE on {node.name} failed: {r.status} {await r.text()}")


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


def video_packets(frames: list[list[float]], start: float, stop: float) -> int:
    """RTP packets of the recorded video frames whose last packet arrived in [start, stop]."""
    return sum(int(f[3]) for f in frames if start <= f[2] <= stop)


async def window(start: float, seconds: float, *nodes: Node) -> dict[str, float]:
    """Each node's CPU seconds over ``seconds`` from the monotonic moment ``start``."""
    await sleep_until(start)
    before = {node.name: process_cpu(node.pid) for node in nodes}
    await asyncio.sleep(seconds)
    return {node.name: process_cpu(node.pid) - before[node.name] for node in nodes}


async def room_view(http: aiohttp.ClientSession, node: Node) -> dict[str, Any]:
    """The room's entry in the node's /healthz media view ({} when the node holds no media of it)."""
    async with http.get(node.base + "/healthz") as response:
        return (await response.json())["media"].get(ROOM, {})


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` every 0.1 s until it holds (RuntimeError past ``timeout``: the run is broken)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


class Edge:
    """Node B's measuring viewers, joined (the edge pulls the room from the origin) or gone (it does not)."""

    def __init__(self, http: aiohttp.ClientSession, args: argparse.Namespace, origin: Node, edge: Node,
                 index: dict[bytes, int]) -> None:
        self.http, self.args, self.origin, self.edge, self.index = http, args, origin, edge, index
        self.viewers: list[Viewer] = []
        self.every: list[Viewer] = []  # each one that joined, to close at the end whatever happened
        #: Seconds each join took until the pull was live, each leave until it was let go of.
        self.waits: dict[str, list[float]] = {"on": [], "off": []}

    async def on(self) -> None:
        """Fresh measuring viewers join B; back once each got frames, A feeds the edge, and a settle passed."""
        if self.viewers:
            return
        self.viewers = [Viewer("node-b", self.index) for _ in range(self.args.measuring)]
        self.every += self.viewers
        began = time.monotonic()
        await asyncio.gather(*(viewer.watch(self.http, self.edge) for viewer in self.viewers))

        async def live() -> bool:
            return (all(viewer.frames for viewer in self.viewers)
                    and (await room_view(self.http, self.origin)).get("edges") == 1)

        await until(live, "the edge's pull live")
        self.waits["on"].append(time.monotonic() - began)
        await asyncio.sleep(self.args.pair_settle)

    async def off(self) -> None:
        """B's measuring viewers leave; back once B let go of its pull, A feeds no edge, and a settle passed."""
        if not self.viewers:
            return
        began = time.monotonic()
        await asyncio.gather(*(viewer.leave(self.http, self.edge) for viewer in self.viewers))
        self.viewers = []

        async def released() -> bool:
            return ((await room_view(self.http, self.edge)).get("pull") is None
                    and not (await room_view(self.http, self.origin)).get("edges"))

        await until(released, "the edge's pull released")
        self.waits["off"].append(time.monotonic() - began)
        await asyncio.sleep(self.args.pair_settle)


class DirectViewer:
    """One full measuring viewer on A, joined or gone: what one viewer costs A, measured as the edge is."""

    def __init__(self, http: aiohttp.ClientSession, args: argparse.Namespace, origin: Node,
                 index: dict[bytes, int]) -> None:
        self.http, self.args, self.origin, self.index = http, args, origin, index
        self.viewer: Viewer | None = None
        self.every: list[Viewer] = []

    async def on(self) -> None:
        """A fresh viewer joins A; back once it got frames and a settle passed."""
        if self.viewer is not None:
            return
        viewer = self.viewer = Viewer("node-a", self.index)
        self.every.append(viewer)
        await viewer.watch(self.http, self.origin)

        async def live() -> bool:
            return bool(viewer.frames)

        await until(live, "the direct viewer's frames")
        await asyncio.sleep(self.args.pair_settle)

    async def off(self) -> None:
        """The viewer leaves; back once A no longer holds it and a settle passed."""
        if self.viewer is None:
            return
        await self.viewer.leave(self.http, self.origin)
        self.viewer = None

        async def left() -> bool:
            return not (await room_view(self.http, self.origin)).get("viewers")

        await until(left, "the direct viewer gone")
        await asyncio.sleep(self.args.pair_settle)


async def pairs(args: argparse.Namespace, toggled: Edge | DirectViewer, origin: Node,
                node_b: Node) -> list[dict[str, Any]]:
    """``--pairs`` adjacent windows with ``toggled`` on and off, in alternating order; each pair's CPU."""
    out = []
    for k in range(args.pairs):
        order = ("on", "off") if k % 2 == 0 else ("off", "on")
        cpu: dict[str, dict[str, float]] = {}
        for state in order:
            await (toggled.on() if state == "on" else toggled.off())
            cpu[state] = await window(time.monotonic(), args.pair_window, origin, node_b)
        on, off = (
            {name: cpu[state][node.name] / args.pair_window for name, node in (("origin", origin), ("edge", node_b))}
            for state in ("on", "off")
        )
        out.append({"order": "/".join(order), "origin_on": on["origin"], "origin_off": off["origin"],
                    "origin_difference": on["origin"] - off["origin"], "edge_on": on["edge"], "edge_off": off["edge"]})
    return out


async def run(args: argparse.Namespace, video: Stream, audio: Stream, index: dict[bytes, int]) -> dict[str, Any]:
    """One run: fresh nodes and Redis prefix, the four phases, the figures of the last window."""
    prefix = f"bench-cascade-{secrets.token_hex(4)}:"
    workdir = Path(tempfile.mkdtemp(prefix="livecart-cascade-"))
    origin = start_node("node-a", workdir, args.redis_url, prefix)
    node_b = start_node("node-b", workdir, args.redis_url, prefix, "--edge-linger", str(args.edge_linger))
    nodes = [origin, node_b]
    counting = args.viewers - args.measuring
    direct: list[Viewer] = []
    edge: Edge | None = None
    alone: DirectViewer | None = None
    workers: dict[str, list[Any]] = {}
    errors: list[str] = []
    publisher = Publisher(video, audio)

    async def tell(node: Node, times: dict[str, float | None]) -> None:
        for process, _ in workers[node.name]:
            process.stdin.write(f"{json.dumps(times)}\n".encode())
            await process.stdin.drain()

    try:
        async with aiohttp.ClientSession() as http:
            await ready(http, nodes)
            async with http.post(origin.base + "/api/rooms", json={"id": ROOM},
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                key = (await r.json())["stream_key"]
            await publisher.publish(http, origin, key)
            await asyncio.sleep(args.settle)
            base = await window(time.monotonic(), args.window, origin)
            edge = Edge(http, args, origin, node_b, index)
            paired = await pairs(args, edge, origin, node_b)
            await edge.off()
            alone = DirectViewer(http, args, origin, index)
            paired_viewer = await pairs(args, alone, origin, node_b)
            await alone.off()

            # the counting viewers' processes start (and import) first, then join on a schedule; those
            # of A are told when to stop once the paired windows ran, those of B join after them
            for node in nodes:
                (workdir / f"{node.name}-viewers").mkdir()
                workers[node.name] = (await start_workers(args, node, counting, workdir / f"{node.name}-viewers", ROOM)
                                      if counting else [])
            join_direct = time.monotonic() + 0.5
            direct_start = join_direct + counting * args.join_interval + args.settle
            await tell(origin, {"join_at": join_direct, "stop_at": None})
            await sleep_until(join_direct)
            direct = [Viewer("node-a", index) for _ in range(args.measuring)]
            await asyncio.gather(*(viewer.watch(http, origin) for viewer in direct))
            with_viewers = await window(direct_start, args.window, origin)

            await edge.on()
            join_edge_counting = time.monotonic() + 0.2
            start = join_edge_counting + counting * args.join_interval + args.settle
            stop = start + args.window
            await tell(origin, {"stop_at": stop + 1.5})
            await tell(node_b, {"join_at": join_edge_counting, "stop_at": stop + 1.5})
            await sleep_until(start)
            core1 = CoreWindow(None, core=1)
            core1.start()
            with_edge = await window(start, args.window, origin, node_b)
            core1_busy = core1.stop().busy
            counted = {node.name: await collect_workers(workers[node.name], errors) for node in nodes}
            viewers, waits = direct + edge.viewers, edge.waits
    finally:
        for group in workers.values():
            for process, _ in group:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        for viewer in direct + (edge.every if edge is not None else []) + (alone.every if alone is not None else []):
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
        per_viewer[viewer.node].append({
            "frames": got, "delivered": min(1.0, got / expected) if expected else 0.0,
            "p50": percentile(values, 50), "p99": percentile(values, 99),
            "video_packets": video_packets(viewer.headers.as_json()["frames"], start, stop),
        })
    # each counting viewer's video packets in the window against the median measuring viewer's
    rates: dict[str, list[float]] = {}
    for name, records in counted.items():
        reference = median(v["video_packets"] for v in per_viewer[name]) or 0
        rates[name] = []
        for viewer in records:
            if viewer["status"] != 201:
                errors.append(f"counting viewer {viewer['index']} on {name}: {viewer['status']} {viewer['error']}")
                continue
            packets = video_packets(viewer["frames"], start, stop)
            rates[name].append(packets / reference if reference else 0.0)
        if len(rates[name]) < counting:
            errors.append(f"{counting - len(rates[name])} counting viewers on {name} did not join")
        if rates[name] and min(rates[name]) < 0.97:
            errors.append(f"a counting viewer on {name} got {min(rates[name]):.1%} of a measuring viewer's packets")
    cpu_viewer_origin = (with_viewers["node-a"] - base["node-a"]) / args.window / args.viewers
    cpu_edge_on_origin_beside_load = (with_edge["node-a"] - with_viewers["node-a"]) / args.window
    cpu_viewer_edge = with_edge["node-b"] / args.window / args.viewers
    # the edge's ingest (its pull) costs about what the origin's publisher ingest costs: the baseline
    cpu_viewer_edge_less_ingest = (with_edge["node-b"] - base["node-a"]) / args.window / args.viewers
    return {
        "viewers_per_node": args.viewers, "measuring_per_node": args.measuring, "window_s": args.window,
        "pair_window_s": args.pair_window, "edge_linger_s": args.edge_linger,
        "frames_sent_in_window": expected,
        "cpu_origin_baseline": base["node-a"] / args.window,
        "cpu_per_viewer_origin": cpu_viewer_origin,
        # the middle two's mean for an even count of pairs: a nearest-rank median would take the lower one
        "cpu_of_one_edge_on_origin_paired": statistics.median(p["origin_difference"] for p in paired),
        "cpu_of_one_viewer_on_origin_paired": statistics.median(p["origin_difference"] for p in paired_viewer),
        "cpu_of_one_edge_on_origin_beside_load": cpu_edge_on_origin_beside_load,
        "cpu_edge_pull_only": statistics.median(p["edge_on"] for p in paired),
        "cpu_per_viewer_edge": cpu_viewer_edge,
        "cpu_per_viewer_edge_less_ingest": cpu_viewer_edge_less_ingest,
        "lag_direct_p50": percentile(pooled["node-a"], 50), "lag_direct_p99": percentile(pooled["node-a"], 99),
        "lag_edge_p50": percentile(pooled["node-b"], 50), "lag_edge_p99": percentile(pooled["node-b"], 99),
        "delivered_min_origin": min((v["delivered"] for v in per_viewer["node-a"]), default=0.0),
        "delivered_min_edge": min((v["delivered"] for v in per_viewer["node-b"]), default=0.0),
        "counting_rate_min_origin": min(rates["node-a"], default=None),
        "counting_rate_min_edge": min(rates["node-b"], default=None),
        "core1_busy": core1_busy,
        "errors": errors,
        "pairs": paired,
        "viewer_pairs": paired_viewer,
        "edge_waits_s": waits,
        "viewers": per_viewer,
        "counting_rates": rates,
    }


FIGURES = (
    "cpu_origin_baseline", "cpu_per_viewer_origin", "cpu_of_one_edge_on_origin_paired",
    "cpu_of_one_viewer_on_origin_paired", "cpu_of_one_edge_on_origin_beside_load", "cpu_edge_pull_only",
    "cpu_per_viewer_edge",
    "cpu_per_viewer_edge_less_ingest", "lag_direct_p50", "lag_direct_p99", "lag_edge_p50", "lag_edge_p99",
    "delivered_min_origin", "delivered_min_edge", "counting_rate_min_origin", "counting_rate_min_edge", "core1_busy",
)  # fmt: skip


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs."""
    return {"viewers_per_node": runs[0]["viewers_per_node"], "errors": [],
            **{name: median(r[name] for r in runs) for name in FIGURES}}


def row(label: str, result: dict[str, Any]) -> list[Any]:
    def added(q: str) -> float | None:
        edge, direct = result[f"lag_edge_{q}"], result[f"lag_direct_{q}"]
        return None if edge is None or direct is None else edge - direct

    def pct(name: str, digits: int = 1) -> str:
        value = result[name]
        return fmt(None if value is None else value * 100, digits)

    return [
        label, result["viewers_per_node"],
        f"{fmt(result['lag_direct_p50'])} / {fmt(result['lag_direct_p99'])}",
        f"{fmt(result['lag_edge_p50'])} / {fmt(result['lag_edge_p99'])}",
        f"{fmt(added('p50'))} / {fmt(added('p99'))}",
        pct("cpu_per_viewer_origin", 2),
        f"{pct('cpu_of_one_edge_on_origin_paired', 2)} / {pct('cpu_of_one_viewer_on_origin_paired', 2)}",
        pct("cpu_of_one_edge_on_origin_beside_load", 2),
        pct("cpu_edge_pull_only", 1),
        f"{pct('cpu_per_viewer_edge', 2)} / {pct('cpu_per_viewer_edge_less_ingest', 2)}",
        f"{pct('delivered_min_origin')} / {pct('delivered_min_edge')}",
        f"{pct('counting_rate_min_origin')} / {pct('counting_rate_min_edge')}",
        pct("core1_busy", 0), "; ".join(result["errors"]) or "-",
    ]


def report(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    rows = [row(str(i + 1), r) for i, r in enumerate(runs)] + [row("median", summary)]
    header = ["run", "viewers per node", "lag direct p50 / p99 ms", "lag through edge p50 / p99 ms",
              "added per hop p50 / p99 ms", "origin CPU % per viewer",
              "origin CPU % paired: for the edge (with its measuring viewers) / for one full viewer",
              "origin CPU % for the edge beside N viewers",
              "edge CPU % with its measuring viewers (paired on windows)",
              "edge CPU % per viewer: all / less one ingest", "frames delivered min % origin / edge",
              "counting rate min % origin / edge", "core 1 busy %", "errors"]
    measuring = runs[0]["measuring_per_node"]
    pairs, pw, linger = len(runs[0]["pairs"]), runs[0]["pair_window_s"], runs[0]["edge_linger_s"]
    note = (f"Both nodes on core 0, publisher and viewers on core 1; per node {measuring} measuring viewers "
            "(full aiortc: lags, frames delivered), the rest counting viewers (RTP counted and dropped at "
            "the socket; counting rate = a counting viewer's video packets over a measuring viewer's). "
            "Lag: publisher hands a frame to its sender -> a measuring viewer's jitter buffer hands it out. "
            "Edge CPU per viewer: all its CPU over N, and less the origin's publisher-only CPU (one stream's "
            f"ingest) over N. Origin CPU for the edge, paired: the median over {pairs} pairs of adjacent {pw:g} s "
            "windows, in alternating order, of the origin's CPU with the edge pulling (it holds only its "
            "measuring viewers) less without it (they left and the edge let go of its pull after its "
            f"{linger:g} s linger), the origin holding the publisher only; then, measured the same way, "
            "for one full viewer joining and leaving the origin (the same aiortc viewer as the measuring "
            "ones, with its RTCP, unlike the counting viewers); each pair's difference is listed below the "
            "table. Beside N viewers: the origin's CPU while the edge serves N viewers on the "
            "same core, less with its N viewers alone in an earlier window. The median row is each column's "
            "median over the runs.")
    def differences(key: str) -> str:
        return "\n".join(
            f"- run {i + 1} ({', '.join(p['order'] for p in r[key])}): "
            + ", ".join(f"{p['origin_difference'] * 100:+.2f}" for p in r[key])
            for i, r in enumerate(runs))

    return (note + "\n\n" + markdown_table(header, rows)
            + "\n\nOrigin CPU % for the edge in each pair (on - off):\n\n" + differences("pairs")
            + "\n\nOrigin CPU % for one full viewer in each pair (on - off):\n\n" + differences("viewer_pairs") + "\n")


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    video, audio = load(StreamSpec(), Path(tempfile.gettempdir()) / "livecart-bench")
    index = {frame_key(payload): i for i, payload in enumerate(video.payloads)}
    if len(index) != len(video.payloads):
        raise RuntimeError("the stream's frames are not all distinct: lags could not be matched")
    runs = []
    for i in range(args.runs):
        runs.append(await run(args, video, audio, index))
        print(f"run {i + 1}:", " | ".join(str(cell) for cell in row(str(i + 1), runs[-1])), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=16, help="viewers on each node, measuring ones included")
    parser.add_argument("--measuring", type=int, default=2, help="full aiortc viewers on each node (lags, frames)")
    parser.add_argument("--runs", type=int, default=3, help="runs (fresh nodes each); the table adds their medians")
    parser.add_argument("--per-process", type=int, default=16, help="counting viewers per viewer process")
    parser.add_argument("--join-interval", type=float, default=0.05, help="seconds between counting viewer joins")
    parser.add_argument("--viewer-rcvbuf", type=int, default=4 * 1024 * 1024, help="counting viewers' UDP buffer")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of each measured window")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds before each window")
    parser.add_argument("--pairs", type=int, default=4, help="pairs of windows with the edge's pull on and off")
    parser.add_argument("--pair-window", type=float, default=10.0, help="seconds of each window of a pair")
    parser.add_argument("--pair-settle", type=float, default=2.0,
                        help="seconds between the edge's pull going live or away and a pair's window")
    parser.add_argument("--edge-linger", type=float, default=0.5,
                        help="node B's edge linger: its pull ends this soon after its last viewer left")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--name", default="media_cascade", help="results file name (bench/results/NAME.md)")
    args = parser.parse_args()
    if not 0 < args.measuring <= args.viewers or args.runs < 1 or args.pairs < 1:
        parser.error("need 0 < --measuring <= --viewers, --runs >= 1 and --pairs >= 1")
    os.sched_setaffinity(0, {1})
    run_record = record("media_cascade")
    runs = uvloop.run(bench(args))
    summary = medians(runs)
    markdown = report(runs, summary)
    print(markdown)
    write_results(args.name, run_record, markdown, {"runs": runs, "median": summary})


if __name__ == "__main__":
    main()

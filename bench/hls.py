"""LL-HLS egress bench: one publisher, N LL-HLS players, one node pinned to one core, no cache.

Per run the bench starts ``livecart serve`` on core 0 (``--server-nice`` as the other benches),
publishes the media fan-out bench's 1280x720 30 fps ~2.5 Mbit/s H264 + Opus clip over WHIP
(bench/media_fanout.py's publisher, bench/media_stream.py's clip), and runs N players
(bench/hls_client.py: blocking reloads with delta updates, every part fetched, one keep-alive
connection each, raw HTTP) in processes pinned to core 1. One more player in this process keeps
every part's bytes, to know which published frames each part holds. Three windows per run:

- **segmenter**: the publisher and that one player only: the server's CPU for a room segmented;
- **HLS**: N players following the live edge: server CPU, requests/s (the server's own
  ``livecart_hls_requests_total``), CPU per player (all the server's CPU over N, the conservative
  share), players one core serves (100 % / CPU per player: **extrapolated** from the measured N,
  not measured at that many), what the players received (Mbit/s each), errors, and the
  glass-to-glass delay: for each part a player received in the window and each video frame in it,
  the part's arrival at the player minus the moment the publisher handed the frame to its sender
  (one machine, one monotonic clock); frames are recognised by their bytes (the clip loops; the
  loop is the last one sent before the part's first arrival anywhere);
- **baseline**: the same N players asking, once per part duration, for the plain playlist and the
  last part it lists (already made: same requests, same bytes, same server): what serving those
  bytes over HTTP costs without blocking reloads, so the HLS window's excess over it is the
  LL-HLS machinery's cost.

The other load on core 0 is reported per window (its busy share minus the server's), and core 1's
busy share in the HLS window: near 100 % the players, not the server, limit the run. Each
figure's median over ``--runs`` runs makes the last table row. Results go to
bench/results/NAME.{md,json} with the commit, command and machine.

    python bench/hls.py --clients 20 --runs 1 --window 5
    python bench/hls.py --clients 400 --runs 3 --server-nice -10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from engine.recording.h264 import nal_units

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hls_client import Connection, Tally, again, player  # noqa: E402
from measure import CoreWindow, fmt, markdown_table, median, percentile, record, write_results  # noqa: E402
from media_fanout import ROOM, Publisher, Server, sleep_until, wait_for_quiet_core0  # noqa: E402
from media_stream import Stream, StreamSpec, load  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class Result:
    """One run of N players."""

    clients: int
    run: int = 1
    segmenter_cpu: float = 0.0  # % of one core: publisher + segmenter + one player
    server_cpu: float = 0.0  # % of one core, N players following the live edge
    baseline_cpu: float = 0.0  # % of one core, N players asking for the playlist's last part at the same pace
    core0_others: float = 0.0  # % of core 0 used by other processes in the HLS window
    core0_others_baseline: float = 0.0
    core1_busy: float = 0.0  # % of core 1 busy in the HLS window (players, publisher): near 100 % = load-bound
    requests_per_s: float = 0.0
    baseline_requests_per_s: float = 0.0
    mbit_per_client: float = 0.0  # parts' bytes a player received in the HLS window, per second
    parts_received: int = 0
    g2g_p50_ms: float | None = None
    g2g_p99_ms: float | None = None
    g2g_frames: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_per_client(self) -> float:
        return self.server_cpu / self.clients

    @property
    def clients_per_core(self) -> float:
        """Extrapolated: 100 % of a core over the measured CPU per player."""
        return 100 / self.cpu_per_client if self.cpu_per_client else float("inf")

    @property
    def marginal_cpu_per_client(self) -> float:
        """% of a core one more player costs: the server's CPU beyond the segmenter's, over N."""
        return max(0.0, self.server_cpu - self.segmenter_cpu) / self.clients

    @property
    def marginal_clients_per_core(self) -> float:
        """Extrapolated: the core left after the room's segmenter over the marginal CPU per player."""
        cost = self.marginal_cpu_per_client
        return (100 - self.segmenter_cpu) / cost if cost else float("inf")

    @property
    def baseline_cpu_per_client(self) -> float:
        return self.baseline_cpu / self.clients


# --- which frames a part holds ---------------------------------------------------------------


def boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """Top-level ISO BMFF boxes: (type, payload)."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        if size < 8:
            break
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + size]))
        pos += size
    return out


def avcc_prefixes(sample: bytes) -> Iterator[bytes]:
    """The NAL units of a length-prefixed sample, joined, after each unit: a fragment's ``mdat``
    holds the video sample first and may hold the audio samples of the same cut after it."""
    units, pos = [], 0
    while pos + 4 <= len(sample):
        size = int.from_bytes(sample[pos:pos + 4], "big")
        if size == 0 or pos + 4 + size > len(sample):
            return
        units.append(sample[pos + 4:pos + 4 + size])
        pos += 4 + size
        yield b"".join(units)


class Frames:
    """Send times of the video frames each part holds (the muxer writes one fragment per frame)."""

    def __init__(self, video: Stream, sent: list[float]) -> None:
        self.position = {b"".join(nal_units(payload)): i for i, payload in enumerate(video.payloads)}
        self.loop = len(video.payloads)
        self.sent = sent

    def sent_times(self, part: bytes, first_arrival: float) -> list[float]:
        times = []
        for kind, payload in boxes(part):
            if kind != b"mdat":
                continue
            position = next((self.position[key] for key in avcc_prefixes(payload) if key in self.position), None)
            if position is None:
                continue  # audio alone
            index = position + self.loop * ((len(self.sent) - 1 - position) // self.loop)
            while index >= 0 and self.sent[index] > first_arrival:
                index -= self.loop
            if index >= 0:
                times.append(self.sent[index])
        return times


# --- a run -----------------------------------------------------------------------------------


async def start_players(args: argparse.Namespace, server: Server, n: int, workdir: Path, tag: str) -> list[Any]:
    """Player processes on core 1 (not started yet); (process, output path) pairs."""
    count = math.ceil(n / args.per_process)
    workers = []
    for w in range(count):
        share = len(range(w, n, count))
        out = workdir / f"{tag}-{w}.json"
        process = await asyncio.create_subprocess_exec(
            "taskset", "-c", "1", sys.executable, str(HERE / "hls_client.py"), "--base", server.base,
            "--room", ROOM, "--first", str(w * args.per_process), "--count", str(share), "--out", str(out),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        workers.append((process, out))
    for process, _ in workers:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"player process did not start: {line!r}")
    return workers


async def go(workers: list[Any], plan: dict[str, Any]) -> None:
    for process, _ in workers:
        process.stdin.write(f"{json.dumps(plan)}\n".encode())
        await process.stdin.drain()


async def collect(workers: list[Any], errors: dict[str, int]) -> list[dict[str, Any]]:
    tallies = []
    for process, out in workers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 60)
        if out.exists():
            tallies.append(json.loads(out.read_text()))
        else:
            errors["player process wrote nothing"] = errors.get("player process wrote nothing", 0) + 1
    for tally in tallies:
        for what, count in tally["errors"].items():
            errors[what] = errors.get(what, 0) + count
    return tallies


def requests_served(server: Server) -> float:
    text = urllib.request.urlopen(f"{server.base}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("livecart_hls_requests_total{"))


async def window(server: Server, seconds: float) -> tuple[float, float, float, float]:
    """(server CPU %, others on core 0 %, requests/s, core 1 busy %) over the next ``seconds``."""
    before = requests_served(server)
    core0, core1 = CoreWindow(server.pid, core=0), CoreWindow(None, core=1)
    core0.start()
    core1.start()
    await asyncio.sleep(seconds)
    share, players = core0.stop(), core1.stop()
    return (100 * share.server, 100 * share.others, (requests_served(server) - before) / share.seconds,
            100 * players.busy)


async def run_once(args: argparse.Namespace, n: int, streams: tuple[Stream, Stream], run: int) -> Result:
    result = Result(n, run)
    await wait_for_quiet_core0(args.quiet, args.quiet_timeout)
    workdir = Path(tempfile.mkdtemp(prefix=f"hls-{n}-"))
    server = Server("stock", None, workdir, args.server_nice)
    server.command += ["--hls-part", str(args.hls_part), "--hls-segment", str(args.hls_segment),
                       "--hls-max-blocked", str(max(2000, 2 * n))]
    server.start()
    publisher = Publisher(*streams)
    workers: list[Any] = []
    probe_tally, kept = Tally(), {}
    probe: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            await publisher.publish(http, server)
        host, port = server.base.removeprefix("http://").rsplit(":", 1)
        probe_connection = Connection(host, int(port), "127.0.0.1")
        end = time.monotonic() + 3600
        probe = asyncio.ensure_future(again(lambda: player(probe_connection, ROOM, probe_tally, end, kept),
                                           probe_connection, probe_tally, end))
        await asyncio.sleep(args.hls_segment * 2 + 1)
        result.segmenter_cpu, _, _, _ = await window(server, args.baseline)

        workers = await start_players(args, server, n, workdir, "hls")
        start_at = time.monotonic() + 0.5
        w0 = start_at + args.ramp + args.settle
        stop_at = w0 + args.window + 1.0
        await go(workers, {"start_at": start_at, "ramp": args.ramp, "stop_at": stop_at})
        await sleep_until(w0)
        (result.server_cpu, result.core0_others, result.requests_per_s,
         result.core1_busy) = await window(server, args.window)
        w1 = time.monotonic()
        tallies = await collect(workers, result.errors)
        # the baseline: the plain playlist and its last part (already made), at the same pace
        workers = await start_players(args, server, n, workdir, "static")
        start_at = time.monotonic() + 0.5
        b0 = start_at + args.ramp + args.settle
        await go(workers, {"start_at": start_at, "ramp": args.ramp, "stop_at": b0 + args.window + 1.0,
                           "static": True, "part_seconds": args.hls_part})
        await sleep_until(b0)
        result.baseline_cpu, result.core0_others_baseline, result.baseline_requests_per_s, _ = await window(
            server, args.window)
        await collect(workers, result.errors)
        workers = []

        frames = Frames(streams[0], publisher.video.sent)
        first: dict[str, float] = {}
        for name, at in probe_tally.parts + [tuple(p) for t in tallies for p in t["parts"]]:
            first[name] = min(at, first.get(name, at))
        sent = {name: frames.sent_times(data, first[name]) for name, data in kept.items() if name in first}
        delays: list[float] = []
        received = 0
        for tally in tallies:
            for name, at in tally["parts"]:
                if w0 <= at <= w1:
                    result.parts_received += 1
                    received += len(kept.get(name, b""))
                    delays += [1000 * (at - t) for t in sent.get(name, ())]
        result.mbit_per_client = received * 8 / 1e6 / n / (w1 - w0)
        result.g2g_frames = len(delays)
        result.g2g_p50_ms, result.g2g_p99_ms = percentile(delays, 50), percentile(delays, 99)
        if not delays:
            result.errors["no frame matched: no glass-to-glass delay"] = 1
    finally:
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(BaseException):
                await probe
        for process, _ in workers:
            if process.returncode is None:
                process.kill()
                await process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.close(), 5)
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- report ----------------------------------------------------------------------------------

COLUMNS = (
    "N", "run", "server CPU %", "req/s", "CPU % / player", "players / core (extrapolated)",
    "marginal CPU % / player", "players / core beside the segmenter (extrapolated)",
    "Mbit/s / player", "glass-to-glass p50 / p99 ms", "frames timed", "segmenter only CPU %",
    "baseline: CPU % / req/s / CPU % per player", "others on core 0 % (HLS / baseline)",
    "core 1 busy %", "errors",
)  # fmt: skip


def median_result(runs: list[Result]) -> Result:
    """Each numeric figure's median over the runs (derived figures follow from these)."""
    out = Result(runs[0].clients, run=0)
    for name in ("segmenter_cpu", "server_cpu", "baseline_cpu", "core0_others", "core0_others_baseline", "core1_busy",
                 "requests_per_s", "baseline_requests_per_s", "mbit_per_client", "g2g_p50_ms", "g2g_p99_ms"):
        setattr(out, name, median(getattr(r, name) for r in runs))
    for name in ("parts_received", "g2g_frames"):
        setattr(out, name, int(median(getattr(r, name) for r in runs) or 0))
    for r in runs:
        for what, count in r.errors.items():
            out.errors[what] = out.errors.get(what, 0) + count
    return out


def row(r: Result) -> list[str]:
    return [
        fmt(r.clients), fmt(r.run) if r.run else "median", fmt(r.server_cpu), fmt(r.requests_per_s, 0),
        fmt(r.cpu_per_client, 3), fmt(r.clients_per_core, 0), fmt(r.marginal_cpu_per_client, 3),
        fmt(r.marginal_clients_per_core, 0), fmt(r.mbit_per_client, 2),
        f"{fmt(r.g2g_p50_ms, 0)} / {fmt(r.g2g_p99_ms, 0)}", fmt(r.g2g_frames), fmt(r.segmenter_cpu),
        f"{fmt(r.baseline_cpu)} / {fmt(r.baseline_requests_per_s, 0)} / {fmt(r.baseline_cpu_per_client, 3)}",
        f"{fmt(r.core0_others)} / {fmt(r.core0_others_baseline)}", fmt(r.core1_busy),
        ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "none",
    ]


def report(results: list[Result], args: argparse.Namespace, spec: StreamSpec, video: Stream) -> str:
    rows = [row(r) for r in results]
    if len(results) > 1:
        rows.append(row(median_result(results)))
    return (
        f"One room, {spec.width}x{spec.height} {spec.fps} fps H264 at {video.bitrate / 1e6:.2f} Mbit/s + Opus, "
        f"parts of {args.hls_part} s, segments of {args.hls_segment} s; the node on core 0 without a cache, "
        f"the players on core 1. Players per core is extrapolated from the CPU per player at N, not measured: "
        f"100 % over (all the server's CPU, segmenter included) / N, the conservative figure, and the core left "
        f"beside the room's segmenter over the marginal CPU per player ((server - segmenter only) / N). "
        f"Baseline: the same players asking for the plain playlist "
        f"and the last part it lists every {args.hls_part} s (the same server serving the same bytes without "
        f"blocking reloads).\n\n" + markdown_table(list(COLUMNS), rows)
    )


async def bench(args: argparse.Namespace) -> tuple[list[Result], StreamSpec, Stream]:
    os.sched_setaffinity(0, {1})
    spec = StreamSpec()
    video, audio = load(spec, Path(args.cache))
    print(f"stream: {spec.width}x{spec.height} {spec.fps} fps, H264 {video.bitrate / 1e6:.2f} Mbit/s", flush=True)
    results = []
    for k in range(args.runs):
        result = await run_once(args, args.clients, (video, audio), k + 1)
        results.append(result)
        print(" | ".join(row(result)), flush=True)
    return results, spec, video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=200, help="LL-HLS players (N)")
    parser.add_argument("--runs", type=int, default=3, help="runs (the table adds their medians)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per window")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds measured with one player only")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the players start")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds after the ramp before measuring")
    parser.add_argument("--per-process", type=int, default=250, help="players per player process")
    parser.add_argument("--hls-part", type=float, default=0.5, help="the server's --hls-part")
    parser.add_argument("--hls-segment", type=float, default=2.0, help="the server's --hls-segment")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "livecart-bench"),
                        help="where the encoded stream is kept between runs")
    parser.add_argument("--quiet", type=float, default=10.0, help="max %% of core 0 busy before a run starts")
    parser.add_argument("--quiet-timeout", type=float, default=30.0, help="seconds to wait for a quiet core 0")
    parser.add_argument("--server-nice", type=int, default=0, help="nice value of the server's session (e.g. -10)")
    parser.add_argument("--keep", action="store_true", help="keep each run's server log and player data")
    parser.add_argument("--name", default="hls", help="results go to bench/results/NAME.{md,json}")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run = record("hls")
    results, spec, video = uvloop.run(bench(args))
    markdown = report(results, args, spec, video)
    print("\n" + markdown)
    data = [asdict(r) | {"cpu_per_client": r.cpu_per_client, "clients_per_core_extrapolated": r.clients_per_core,
                         "marginal_cpu_per_client": r.marginal_cpu_per_client,
                         "marginal_clients_per_core_extrapolated": r.marginal_clients_per_core} for r in results]
    print(write_results(args.name, run, markdown, data))


if __name__ == "__main__":
    main()

"""Event fan-out bench: one room, N websocket viewers, the engine against a bare broadcast floor.

For each ``N x R`` in ``--matrix`` and each server in ``--servers`` (in the same run):

1. start the server pinned to core 0: the engine (``livecart serve``) or the floor
   (``bench/fanout_floor.py``: ``websockets.broadcast`` of each published message);
2. open N viewers from ``--procs`` client processes pinned to core 1
   (``bench/fanout_client.py``: raw uvloop sockets, orjson only to read seq and time);
3. publish discrete events at R per second from this process (also on core 1): to the
   engine as a host's ``chat`` action over the websocket, to the floor as the same JSON
   the engine would send (same keys, same size, ~``--size`` bytes); each carries its
   index and its send time (``time.time()``) in the chat text;
4. over the measured events (after ``--warmup`` seconds) record, at every viewer, the
   publish-to-receive latency and every missed event (index count and seq gaps), and the
   server's CPU time (utime + stime from /proc/PID/stat) from the first measured publish
   until the last viewer has the last event; divide by the deliveries;
5. the publisher (this process) runs SCHED_FIFO so its events leave on time however
   busy the viewers keep core 1; the viewers' CPU share is reported so a run whose
   clients were saturated can be told apart;
6. meanwhile a probe connection (SCHED_FIFO on core 1, so the busy clients do not delay
   it) pings the server every 5 ms: its round trip is how long the server's loop was
   blocked.

Usage (as root, from the repository root):

    python bench/fanout.py --matrix 1000x10,5000x10,10000x10 --duration 10

Two engines in one command (before / after a change): check the earlier commit out beside this one
and name it with ``--baseline``; its engine runs as the server ``baseline`` (``python -m engine.cli
serve`` from that checkout, same flags), interleaved run by run with this checkout's engine and the
floor, so both engines are measured under the same noise:

    git worktree add --detach /tmp/livecart-before COMMIT
    python bench/fanout.py --matrix 1000x10 --repeat 5 --baseline /tmp/livecart-before

Several nodes on one Redis (bench/cluster.py): ``--nodes K`` runs K engines sharing a Redis
(``--redis-url``, or a redis-server of the bench's own pinned to core 1 beside the load), N viewers on
each, events published through the first node, beside one memory-backed engine holding all K x N
viewers in the same command; it adds the latency at the other nodes' viewers and Redis's CPU and
commands per event (``INFO cpu``, ``INFO commandstats``, bench/redis_meter.py):

    python bench/fanout.py --nodes 2 --matrix 1000x10 --repeat 3 --name fanout-nodes

Writes a markdown table (medians over ``--repeat``, then every run) and every run's figures to
bench/results/NAME.{md,json} (bench/measure.py), with the commit, command and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cluster
import numpy as np
import orjson
import uvloop
from measure import (
    CoreWindow,
    commit,
    fmt,
    free_port,
    markdown_table,
    median,
    percentile,
    prioritise,
    process_cpu,
    record,
    write_results,
)
from redis_meter import RedisMeter, RedisUsage
from websockets.asyncio.client import ClientConnection, connect

from signaling.tokens import mint

HERE = Path(__file__).resolve().parent
CLIENT = str(HERE / "fanout_client.py")
FLOOR = str(HERE / "fanout_floor.py")
ROOM = "demo"
HOST_SUB = "bench-host"
# this checkout's engine, the one in --baseline's checkout, and this checkout's engine as --nodes K nodes on Redis
ENGINES = ("engine", "baseline", "nodes")
ORDER = {"engine": 0, "nodes": 1, "baseline": 2, "floor": 3}  # the tables' row order

async def wait_listening(port: int, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} after {timeout}s")


class Child:
    """A helper process spoken to with one JSON line per command."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *argv: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=HERE.parent)
        return cls(proc)

    async def read(self, timeout: float = 60) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"helper {self.proc.pid} exited ({await self.proc.wait()})")
        return orjson.loads(line)

    async def ask(self, command: str, timeout: float = 60) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")

    async def end(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


class Server:
    """The engine or the floor, pinned to core 0; or one of the nodes of a cluster run (``cluster``:
    the flags that put it on the shared Redis, ``core``: the core it is pinned to, ``secret``: the
    token secret all nodes share)."""

    def __init__(self, kind: str, args: argparse.Namespace, workdir: Path, cluster: list[str] | None = None,
                 core: int = 0, secret: str = "") -> None:
        self.kind = kind
        self.port = free_port()
        self.secret = secret or (secrets.token_hex(16) if kind in ENGINES else "")
        self.log = workdir / f"{kind}-{self.port}.log"
        self.cwd = HERE.parent
        if kind in ENGINES:
            # The baseline runs from its own checkout: `-m` puts that directory first on sys.path.
            # This checkout's engine runs from it too (not whichever `livecart` is first on PATH).
            program = [sys.executable, "-m", "engine.cli"]
            if kind == "baseline":
                self.cwd = Path(args.baseline).resolve()
            most = args.max_n * max(1, args.nodes) + 100  # the memory baseline holds every node's viewers
            self.argv = [
                "taskset", "-c", str(core), *program, "serve", "--host", "127.0.0.1",
                "--http-port", str(free_port()), "--ws-port", str(self.port),
                "--data-dir", str(workdir / f"data-{self.port}"), "--secret", self.secret,
                "--admin-key", secrets.token_hex(8), "--demo-room", ROOM,
                "--max-connections", str(most), "--max-ws-per-ip", str(most), *(cluster or []),
                "--chat-rate", "100000", "--chat-burst", "100000",
                "--msg-rate", "100000", "--msg-burst", "100000",
                *args.engine_arg,
            ]
        else:
            self.argv = ["taskset", "-c", str(core), sys.executable, FLOOR, "--port", str(self.port)]
        self.core = core
        self.nice = args.server_nice
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdout=log, stderr=log, cwd=self.cwd, start_new_session=True)
        prioritise(self.proc.pid, self.nice)
        await wait_listening(self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def query(self, role: str, sub: str) -> str:
        return f"token={mint(self.secret, ROOM, role, sub, 3600)}" if self.secret else "publisher=1"

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Publisher:
    """Sends the bench's events: chat actions to the engine, the engine's event JSON to the floor."""

    def __init__(self, server: Server, size: int) -> None:
        self.server = server
        self.ws: ClientConnection | None = None
        self.seq_base = int(time.time() * 1_000_000)
        sample = self._floor_event(0, time.time(), f"{10**5} {time.time():.6f} ")
        self.pad = "x" * max(0, size - len(orjson.dumps(sample)))
        self._drain: asyncio.Task[None] | None = None
        self.errors = 0

    def _floor_event(self, k: int, now: float, text: str) -> dict[str, Any]:
        # The same keys, in the same order, as engine.bus.base.Event.wire() for a host's chat.
        return {"user": HOST_SUB, "role": "host", "text": text, "type": "chat",
                "seq": self.seq_base + k, "ts": round(now * 1000, 3)}

    async def open(self) -> None:
        url = f"ws://127.0.0.1:{self.server.port}/ws?{self.server.query('host', HOST_SUB)}"
        self.ws = await connect(url, compression=None, max_size=None)
        self._drain = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if b'"error"' in (message.encode() if isinstance(message, str) else message):
                self.errors += 1

    async def publish(self, k: int) -> None:
        assert self.ws is not None
        now = time.time()
        text = f"{k} {now:.6f} {self.pad}"
        if self.server.kind in ENGINES:
            await self.ws.send(orjson.dumps({"type": "chat", "id": k, "text": text}).decode())
        else:
            await self.ws.send(orjson.dumps(self._floor_event(k, now, text)).decode())

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._drain is not None:
            self._drain.cancel()


async def start_servers(kind: str, args: argparse.Namespace, workdir: Path, redis_url: str) -> list[Server]:
    """The run's server: one process, or with ``kind`` "nodes" the --nodes nodes on ``redis_url`` under a
    fresh prefix, started one after the other (the first creates the room, the others find it)."""
    if kind != "nodes":
        servers = [Server(kind, args, workdir, core=cluster.node_core(args, 0))]
    else:
        prefix, secret = cluster.new_prefix(), secrets.token_hex(16)
        servers = [Server(kind, args, workdir, cluster.node_flags(redis_url, prefix, i), cluster.node_core(args, i),
                          secret) for i in range(args.nodes)]
    started: list[Server] = []
    try:
        for server in servers:
            started.append(server)
            await server.start()
    except BaseException:
        for server in started:
            await server.stop()
        raise
    return servers


async def run_one(kind: str, n: int, rate: float, args: argparse.Namespace, workdir: Path,
                  redis_url: str = "") -> dict[str, Any]:
    """One run. With --nodes K, N is the viewers per node: K x N viewers on the K nodes (``kind``
    "nodes"), or all K x N on the one server of any other kind; events go in through the first node."""
    servers = await start_servers(kind, args, workdir, redis_url)
    server = servers[0]
    total = n * max(1, args.nodes)
    python = sys.executable
    procs = max(len(servers), min(args.procs, total))
    warm = max(3, int(rate * args.warmup))
    measured = max(1, int(rate * args.duration))
    workers: list[Child] = []
    probe: Child | None = None
    publisher = Publisher(server, args.size)
    lat_files = [workdir / f"lat-{kind}-{n}-{i}.f32" for i in range(procs)]
    node_of = [i % len(servers) for i in range(procs)]  # client process i opens its viewers on this node
    core0_pids = [s.pid for s in servers if s.core == 0]
    meter = RedisMeter(redis_url) if kind == "nodes" else None
    try:
        for i in range(procs):
            mine = [j for j in range(procs) if node_of[j] == node_of[i]]  # the processes of this node
            share = total // len(servers) + (1 if node_of[i] < total % len(servers) else 0)
            rank = mine.index(i)
            count = share // len(mine) + (1 if rank < share % len(mine) else 0)
            argv = ["taskset", "-c", "1", python, CLIENT, "viewers", "--port", str(servers[node_of[i]].port),
                    "--secret", server.secret, "--room", ROOM, "--count", str(count), "--worker", str(i),
                    "--concurrency", str(max(4, args.concurrency // procs)), "--warmup", str(warm),
                    "--lat-file", str(lat_files[i])]
            if args.src_ips:
                argv += ["--src", f"127.0.0.{2 + i}"]
            workers.append(await Child.start(*argv))
        ready = [await w.read(timeout=300) for w in workers]
        connected = sum(r["ready"] for r in ready)
        if connected < total:
            raise RuntimeError(f"{kind}: only {connected} of {total} viewers connected: {ready}")
        probe = await Child.start("chrt", "-f", "20", "taskset", "-c", "1", python, CLIENT, "probe",
                                  "--port", str(server.port), "--secret", server.secret, "--room", ROOM,
                                  "--interval", str(args.probe_interval), "--pid", str(server.pid))
        await probe.read()
        await publisher.open()
        await asyncio.sleep(1.0)  # let the joins' viewer-count events go out before publishing
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        window = CoreWindow(core0_pids, core=0)
        every_node = CoreWindow([s.pid for s in servers], core=0)  # its CPU: all nodes, wherever pinned
        clients0 = 0.0
        spy: asyncio.subprocess.Process | None = None
        for k in range(warm + measured):
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if k == warm:
                probe.tell("start")
                window.start()
                every_node.start()
                if meter is not None:
                    meter.start()
                clients0 = sum(process_cpu(w.proc.pid) for w in workers)
                if args.py_spy:
                    spy = await asyncio.create_subprocess_exec(
                        "taskset", "-c", "1", "py-spy", "record", "--pid", str(server.pid), "--rate", "250",
                        "--nonblocking", "--format", "raw", "--duration", str(int(args.duration)),
                        "-o", str(Path(args.py_spy) / f"{kind}-{n}x{rate:g}.txt"),
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await publisher.publish(k)
        expected = total * measured
        deadline = time.monotonic() + args.drain
        got = 0
        while time.monotonic() < deadline:
            got = sum([(await w.ask("count"))["got"] for w in workers])
            if got >= expected:
                break
            await asyncio.sleep(0.02)
        core0 = window.stop()
        cpu = every_node.stop().cpu
        redis = meter.stop() if meter is not None else None
        clients1 = sum(process_cpu(w.proc.pid) for w in workers)
        lag = await probe.ask("stop")
        if spy is not None:
            await spy.wait()
        reports = [await w.ask(f"report {measured}") for w in workers]
        lats = [np.fromfile(f, dtype=np.float32) for f in lat_files]
        lat = np.concatenate(lats)
        cross = [x for i, part in enumerate(lats) if node_of[i] != 0 for x in part.tolist()]
        deliveries = sum(r["got"] for r in reports)
        result = {
            "server": kind, "n": n, "rate": rate, "events": measured, "procs": procs,
            "nodes": len(servers), "viewers": total,
            "payload_bytes": max(r["size"] for r in reports),
            "deliveries": deliveries,
            "window_s": round(core0.seconds, 3),
            "deliveries_per_s": round(deliveries / core0.seconds),
            "server_cpu_s": round(cpu, 3),
            "server_cpu_pct": round(100 * cpu / core0.seconds, 1),
            "core0_others_pct": round(100 * core0.others, 1),
            "client_cpu_pct": round(100 * (clients1 - clients0) / core0.seconds, 1),
            # from the unrounded CPU seconds, so this is server_cpu_s / deliveries
            "us_per_delivery": round(cpu / deliveries * 1e6, 2) if deliveries else None,
            "p50_ms": percentile(lat.tolist(), 50),
            "p99_ms": percentile(lat.tolist(), 99),
            "max_ms": float(lat.max()) if lat.size else None,
            # viewers on the nodes other than the first (the one events are published through)
            "cross_p50_ms": percentile(cross, 50), "cross_p99_ms": percentile(cross, 99),
            "missed": sum(r["missing"] for r in reports),
            "clients_missing": sum(r["clients_missing"] for r in reports),
            "seq_gaps": sum(r["seq_gaps"] for r in reports),
            "closed": sum(r["closed"] for r in reports),
            "client_errors": sum(r["errors"] for r in reports) + publisher.errors,
            "probe_pings": lag["pings"],
            **{f"probe_rtt_{k}": v for k, v in lag["rtt"].items()},
            **{f"probe_busy_{k}": v for k, v in lag["busy"].items()},
            "probe_stalls": lag["stalls"],
            **gc_warnings([s.log for s in servers]),
            **redis_figures(redis, core0.seconds, measured, deliveries),
        }
        for f in lat_files:
            f.unlink(missing_ok=True)
        return result
    finally:
        await publisher.close()
        for child in [*workers, *([probe] if probe else [])]:
            await child.end()
        for one in servers:
            await one.stop()
        if meter is not None:
            meter.close()


def gc_warnings(logs: list[Path]) -> dict[str, Any]:
    """The engines' own logs of collections that held a loop >= --gc-warn-ms (whole run, joins included)."""
    pauses = [float(line.split(" held the loop ")[1].split(" ms")[0])
              for log in logs for line in log.read_text(errors="replace").splitlines() if "gc: a generation" in line]
    return {"gc_pauses_logged": len(pauses), "gc_pause_max_ms": max(pauses, default=None)}


def redis_figures(usage: RedisUsage | None, seconds: float, events: int, deliveries: int) -> dict[str, Any]:
    """Redis's share of a run's window: its CPU per published event and per delivery, its commands per
    event (every command counted, those inside scripts included; ``EVALSHA`` = scripts called)."""
    if usage is None:
        return {}
    return {
        "redis_cpu_s": round(usage.cpu, 3),
        "redis_cpu_pct": round(100 * usage.cpu / seconds, 1) if seconds else None,
        "redis_us_per_event": round(usage.cpu / events * 1e6, 1) if events else None,
        "redis_us_per_delivery": round(usage.cpu / deliveries * 1e6, 3) if deliveries else None,
        "redis_commands_per_event": round(usage.total / events, 2) if events else None,
        "redis_evalsha_per_event": round(usage.calls("evalsha") / events, 2) if events else None,
        "redis_publish_per_event": round(usage.calls("publish") / events, 2) if events else None,
        "redis_commands": usage.commands,
    }


def table(results: list[dict[str, Any]], baseline: str = "") -> str:
    """Medians over repeats per (N, R, server), the engine/floor CPU ratio, then every run; with a
    baseline engine (``baseline`` names its commit), the engine's CPU per delivery over the baseline's."""
    groups: dict[tuple[int, float, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["n"], r["rate"], r["server"]), []).append(r)

    def med(rows: list[dict[str, Any]], key: str) -> Any:
        return median(r[key] for r in rows)

    rows = []
    against: list[str] = []
    for (n, rate, kind), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], ORDER[kv[0][2]])):
        cost = med(runs, "us_per_delivery")
        floor = groups.get((n, rate, "floor"))
        floor_cost = med(floor, "us_per_delivery") if floor else None
        ratio = cost / floor_cost if floor_cost and cost and kind in ENGINES else None
        before = groups.get((n, rate, "baseline"))
        if kind == "engine" and before:
            before_cost = med(before, "us_per_delivery")
            before_ratio = (before_cost / floor_cost) if floor_cost and before_cost else None
            against.append(
                f"- {n:,} x {rate:g}: CPU µs per delivery, engine / baseline = {fmt(cost, 2)} / "
                f"{fmt(before_cost, 2)} = {fmt(cost / before_cost if cost and before_cost else None, 3)}; "
                f"x floor {fmt(ratio, 2)} / {fmt(before_ratio, 2)} = "
                f"{fmt(ratio / before_ratio if ratio and before_ratio else None, 3)}")
        rows.append([
            f"{n:,}", f"{rate:g}", kind, len(runs), fmt(med(runs, "deliveries_per_s"), 0), fmt(cost, 2),
            fmt(ratio, 2), fmt(med(runs, "server_cpu_pct")), fmt(med(runs, "core0_others_pct")),
            fmt(med(runs, "client_cpu_pct")), fmt(med(runs, "p50_ms")), fmt(med(runs, "p99_ms")),
            fmt(med(runs, "max_ms")), sum(r["missed"] for r in runs),
            f"{fmt(med(runs, 'probe_busy_p99'))} / {fmt(med(runs, 'probe_busy_max'))}",
            sum(r["probe_busy_over20"] for r in runs),
        ])
    medians = markdown_table(
        ["N", "R/s", "server", "runs", "deliveries/s", "CPU µs/delivery", "x floor", "server CPU %",
         "others on core 0 %", "clients CPU %", "p50 ms", "p99 ms", "max ms", "missed",
         "loop busy p99 / max ms", "pings busy > 20 ms"],
        rows,
    )
    per_run = markdown_table(
        ["N", "R/s", "server", "run", "CPU µs/delivery", "server CPU %", "others on core 0 %", "p50 ms", "p99 ms",
         "loop busy max ms", "missed"],
        [[f"{r['n']:,}", f"{r['rate']:g}", r["server"], r["repeat"] + 1, fmt(r["us_per_delivery"], 2),
          fmt(r["server_cpu_pct"]), fmt(r["core0_others_pct"]), fmt(r["p50_ms"]), fmt(r["p99_ms"]),
          fmt(r["probe_busy_max"]), r["missed"]]
         for r in sorted(results, key=lambda r: (r["n"], r["rate"], ORDER[r["server"]], r["repeat"]))],
    )
    compared = (f"\n\nThe engine against the baseline engine (commit `{baseline}`), medians of this command's "
                "runs:\n\n" + "\n".join(against)) if against else ""
    return (
        "Medians over the runs of each row (nearest-rank, bench/measure.py); `x floor` = the engine's median CPU "
        "per delivery over the floor's, both from this command's runs. Loop busy = the server loop's own CPU "
        "time during a 5 ms probe ping's round trip.\n\n"
        f"{medians}{compared}\n\nEvery run:\n\n{per_run}"
    )


def cluster_table(results: list[dict[str, Any]], args: argparse.Namespace, cores: str) -> str:
    """--nodes K: per (N, R) the K nodes on Redis against the memory-backed node (and the floor, if run),
    medians over the runs; the cross-node latency target judged on them; then every run."""
    groups: dict[tuple[int, float, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["n"], r["rate"], r["server"]), []).append(r)

    def med(rows: list[dict[str, Any]], key: str) -> Any:
        return median(r.get(key) for r in rows)

    labels = {"engine": "1 node, memory bus", "nodes": f"{args.nodes} nodes, Redis", "floor": "floor, 1 process",
              "baseline": "baseline engine, memory bus"}
    rows, verdicts = [], []
    for (n, rate, kind), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], ORDER[kv[0][2]])):
        rows.append([
            f"{n:,}", f"{runs[0]['viewers']:,}", f"{rate:g}", labels[kind], len(runs),
            fmt(med(runs, "deliveries_per_s"), 0), fmt(med(runs, "us_per_delivery"), 2),
            fmt(med(runs, "server_cpu_pct")), fmt(med(runs, "core0_others_pct")), fmt(med(runs, "client_cpu_pct")),
            fmt(med(runs, "p50_ms")), fmt(med(runs, "p99_ms")),
            f"{fmt(med(runs, 'cross_p50_ms'))} / {fmt(med(runs, 'cross_p99_ms'))}", fmt(med(runs, "max_ms")),
            sum(r["missed"] for r in runs), sum(r["seq_gaps"] for r in runs),
            fmt(med(runs, "redis_cpu_pct")), fmt(med(runs, "redis_us_per_event")),
            fmt(med(runs, "redis_us_per_delivery"), 3), fmt(med(runs, "redis_commands_per_event"), 2),
            fmt(med(runs, "redis_evalsha_per_event"), 2),
        ])
        if kind == "nodes":
            p99 = med(runs, "cross_p99_ms")
            missed = sum(r["missed"] + r["seq_gaps"] for r in runs)
            verdicts.append(
                f"- {n:,} viewers per node x {rate:g} events/s, p99 publish-to-receive on the nodes other than the "
                f"publishing one < 40 ms: {fmt(p99)} ms, "
                f"{'not judged' if p99 is None else 'met' if p99 < 40 else 'not met'}; "
                f"events missed or seq gaps over all runs: {missed:,}")
    medians = markdown_table(
        ["N per node", "viewers", "R/s", "server", "runs", "deliveries/s", "CPU µs/delivery (all nodes)",
         "nodes' CPU % (of one core)", "others on core 0 %", "clients CPU %", "p50 ms", "p99 ms",
         "other nodes' viewers p50 / p99 ms", "max ms", "missed", "seq gaps", "Redis CPU %", "Redis CPU µs/event",
         "Redis CPU µs/delivery", "Redis commands/event", "EVALSHA/event"],
        rows)
    per_run = markdown_table(
        ["N per node", "R/s", "server", "run", "CPU µs/delivery", "nodes' CPU %", "others on core 0 %", "p50 ms",
         "p99 ms", "other nodes' p99 ms", "missed", "Redis CPU µs/event", "Redis commands/event"],
        [[f"{r['n']:,}", f"{r['rate']:g}", labels[r["server"]], r["repeat"] + 1, fmt(r["us_per_delivery"], 2),
          fmt(r["server_cpu_pct"]), fmt(r["core0_others_pct"]), fmt(r["p50_ms"]), fmt(r["p99_ms"]),
          fmt(r["cross_p99_ms"]), r["missed"], fmt(r.get("redis_us_per_event")),
          fmt(r.get("redis_commands_per_event"), 2)]
         for r in sorted(results, key=lambda r: (r["n"], r["rate"], ORDER[r["server"]], r["repeat"]))])
    return (
        f"{cores}\n\nEvents are published through the first node; with {args.nodes} nodes each holds N viewers, "
        f"the memory-backed node all {args.nodes} x N. Medians over the runs of each row (nearest-rank, "
        "bench/measure.py). CPU is every node's utime + stime over the measured window; Redis's CPU is "
        "used_cpu_sys + used_cpu_user of `INFO cpu` and its commands the calls of `INFO commandstats` over the "
        "same window (commands run inside scripts included), per published event and per delivery.\n\n"
        f"{medians}\n\nTargets, on the medians:\n\n" + "\n".join(verdicts) + f"\n\nEvery run:\n\n{per_run}"
    )


async def main(args: argparse.Namespace) -> None:
    run = record("fanout")
    if args.baseline:
        run["baseline_commit"] = commit(Path(args.baseline).resolve())
    matrix = [(int(n), float(r)) for n, r in (item.split("x") for item in args.matrix.split(","))]
    args.max_n = max(n for n, _ in matrix)
    results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        redis_url = cluster.redis_url(args, stack) if args.nodes else ""
        if args.nodes:
            run["cores"] = cluster.core_split(args)
            print(run["cores"], flush=True)
        for rep in range(args.repeat):
            for n, rate in matrix:
                kinds = sorted(args.servers.split(",") + (["baseline"] if args.baseline else []), key=ORDER.__getitem__)
                for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                    try:
                        result = await run_one(kind, n, rate, args, workdir, redis_url)
                    except (RuntimeError, TimeoutError) as exc:  # one stalled run must not lose the others
                        failed.append({"server": kind, "n": n, "rate": rate, "repeat": rep, "error": repr(exc)})
                        print(orjson.dumps(failed[-1]).decode(), flush=True)
                    else:
                        result["repeat"] = rep
                        results.append(result)
                        print(orjson.dumps(result).decode(), flush=True)
                    # written after every run, so the runs done so far survive an interrupted command
                    tables = cluster_table(results, args, run["cores"]) if args.nodes else table(
                        results, run.get("baseline_commit", ""))
                    markdown = tables + "".join(
                        f"\n\nRun {f['repeat'] + 1} of {f['server']} at {f['n']:,} x {f['rate']:g} failed: "
                        f"`{f['error']}`" for f in failed)
                    path = write_results(args.name, run, markdown, {"runs": results, "failed": failed})
                    await asyncio.sleep(args.pause)
    print(markdown)
    print(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--matrix", default="1000x10,5000x10,10000x10", help="comma-separated NxR (viewers x events/s)")
    parser.add_argument("--servers", default="",
                        help="comma-separated: engine (memory bus), floor, nodes (the --nodes K nodes on Redis); "
                             "default engine,floor, or engine,nodes with --nodes")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds of publishing per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured events first")
    parser.add_argument("--size", type=int, default=200, help="event JSON bytes (the websocket payload)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (all on core 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight over all processes")
    parser.add_argument("--src-ips", action="store_true", help="one source address 127.0.0.x per client process")
    parser.add_argument("--probe-interval", type=float, default=0.005)
    parser.add_argument("--drain", type=float, default=30.0, help="longest wait for the last deliveries, s")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--server-nice", type=int, default=0,
                        help="nice value of both servers' sessions (e.g. -10 when other work shares core 0)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--engine-arg", action="append", default=[], help="extra livecart serve flag (repeatable)")
    parser.add_argument("--py-spy", default="", help="profile each server's measured window into this directory")
    parser.add_argument("--name", default="fanout", help="results go to bench/results/NAME.{md,json}")
    parser.add_argument("--baseline", default="",
                        help="another livecart checkout (e.g. an earlier commit): its engine runs too, as `baseline`")
    cluster.add_arguments(parser)
    args = parser.parse_args(argv)
    cluster.check(parser, args)
    args.servers = args.servers or ("engine,nodes" if args.nodes else "engine,floor")
    if "nodes" in args.servers.split(",") and not args.nodes:
        parser.error("--servers nodes needs --nodes K")
    unknown = set(args.servers.split(",")) - {"engine", "floor", "nodes"}
    if unknown:
        parser.error(f"unknown server(s) in --servers: {', '.join(sorted(unknown))}"
                     " (the baseline comes with --baseline)")
    if args.baseline and not (Path(args.baseline) / "engine" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a livecart checkout (no engine/cli.py)")
    return args


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 20,000 here: enough for 10,000 viewers
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {1})
    # The publisher sends on time even while the viewers keep core 1 busy (children reset to normal).
    os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
    uvloop.run(main(parse_args()))

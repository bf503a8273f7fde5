"""Tap storm: a flash sale of Q units, N viewers tapping as fast as the tap limit allows, W more
viewers only watching the counter. Server on core 0, every client on core 1.

    python bench/tapstorm.py --tappers 1000 --rate 15 --watchers 1000 --quantity 10000

Why dedicated asyncio clients rather than locust: the load side has one core for 2,000 sockets
and ~15,000 taps/s plus the room's events; a locust websocket user (gevent + websocket-client)
costs several times more per message and would measure itself. The clients here are bare uvloop
protocols (bench/fanout_client.RawSocket: hand-made RFC 6455 handshake and frame parsing) spread
over a few processes, that only `orjson.loads` acks, errors and frames that may show the zero.

Timeline of a run (all connections open before it starts):
- floor: the tappers send an action type the server does not know, at the same rate, for
  `--floor` seconds. It takes the channel's whole path (rate limit, decode, error reply) without
  the commerce domain: the baseline the tap figures are compared with.
- storm: the host creates the sale to start `--lead` seconds later (so the storm opens with
  sale_not_live answers, like viewers hammering before a sale opens); taps go on for
  `--duration` seconds, through the sell-out and after it (sold_out / limit_reached answers).
- then each tapper checks out; units sold = the units in the room's orders, read over REST.

Latency is tap-to-ack at the client (send to reply, any reply). "Sold out seen" is, per watcher,
the first frame saying remaining 0 (the discrete sale.sold_out or the coalesced sale.remaining),
measured from the server's publish time of sale.sold_out (`ts` on the event).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from typing import Any

import orjson
import uvloop
from fanout_client import TEXT, RawSocket, masked, upgrade_request

from signaling.tokens import mint

SECRET = "tapstorm-secret-" + "x" * 32
ADMIN = "tapstorm-admin"
ROOM = "bench"
SALE = "flash"
HERE = os.path.dirname(os.path.abspath(__file__))


# -- load side (one process per slice of clients) --------------------------------------------


class Tapper(RawSocket):
    """Sends taps (or floor actions) on command; times every reply by request id."""

    def __init__(self, request: bytes, lat: array) -> None:
        super().__init__(request)
        self.lat = lat
        self.sent: dict[int, float] = {}
        self.replies = 0
        self.units = 0
        self.codes: dict[str, int] = {}
        self.order: dict[str, Any] | None = None
        self.retry = False  # the checkout was rate limited: send it again

    def send(self, n: int, kind: str) -> None:
        body = (b'{"type":"tap","id":%d,"sale_id":"flash"}' if kind == "tap" else b'{"type":"floor","id":%d}') % n
        self.sent[n] = time.perf_counter()
        self.transport.write(masked(TEXT, body))

    def on_text(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"type":"ack"'):
            reply = orjson.loads(payload)
            if "order" in reply:
                self.order = reply["order"]
                return
            self.units += reply["line"]["quantity"]
            self.codes["ok"] = self.codes.get("ok", 0) + 1
        elif payload.startswith(b'{"type":"error"'):
            reply = orjson.loads(payload)
            self.codes[reply["code"]] = self.codes.get(reply["code"], 0) + 1
            if reply.get("re") == "checkout":
                self.order = None if reply["code"] == "rate_limited" else {}
                self.retry = reply["code"] == "rate_limited"
                return
        else:
            return
        sent = self.sent.pop(reply.get("re"), None)
        if sent is not None:
            self.lat.append((time.perf_counter() - sent) * 1000)
            self.replies += 1


class Watcher(RawSocket):
    """Notes when it first saw the sale's counter at zero, and the sold-out event's publish time."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.zero_at: float | None = None
        self.sold_out_ts: float | None = None
        self.frames = 0

    def on_text(self, payload: bytes, now: float) -> None:
        self.frames += 1
        if payload.startswith(b'{"type":"snapshot"'):  # a resync after lagging: read the sale from it
            sales = orjson.loads(payload).get("sales", [])
            if self.zero_at is None and any(s["id"] == SALE and s["remaining"] == 0 for s in sales):
                self.zero_at = now
            return
        if b'"remaining":0,' not in payload or b'"sale":"flash"' not in payload:
            return
        if self.zero_at is None:
            self.zero_at = now
        if b'"type":"sale.sold_out"' in payload:
            self.sold_out_ts = orjson.loads(payload)["ts"] / 1000


async def open_all(port: int, subs: list[str], make: Any) -> list[Any]:
    loop = asyncio.get_running_loop()
    clients = []
    for sub in subs:
        query = f"token={mint(SECRET, ROOM, 'viewer', sub, 3600)}"
        client = make(upgrade_request(port, query))
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)
        await client.ready
        clients.append(client)
    return clients


async def pace(tappers: list[Tapper], kind: str, rate: float, start: float, end: float, first_id: int) -> int:
    """Each tapper sends at `rate`/s from `start` to `end` (wall clock), spread evenly across them."""
    total = rate * len(tappers)
    sent, n = 0, first_id
    while True:
        now = time.time()
        if now >= end:
            return n
        if now >= start:
            due = int((now - start) * total) - sent
            for _ in range(due):
                tappers[sent % len(tappers)].send(n, kind)
                sent += 1
                n += 1
        await asyncio.sleep(0.001)


async def client_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    lat_floor, lat_storm = array("d"), array("d")
    tappers = await open_all(args.port, args.tap_subs.split(",") if args.tap_subs else [],
                             lambda r: Tapper(r, lat_floor))
    watchers = await open_all(args.port, args.watch_subs.split(",") if args.watch_subs else [], Watcher)
    print(json.dumps({"ready": len(tappers) + len(watchers)}), flush=True)
    plan = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    cpu0 = time.process_time()
    n = await pace(tappers, "floor", args.rate, plan["warmup_start"], plan["warmup_end"], 1)
    await asyncio.sleep(max(0.0, plan["floor_start"] - time.time()))  # warm-up replies are in: reset
    for t in tappers:
        t.replies, t.codes, t.sent = 0, {}, {}
    del lat_floor[:]
    n = await pace(tappers, "floor", args.rate, plan["floor_start"], plan["floor_end"], n)
    await asyncio.sleep(max(0.0, plan["storm_start"] - time.time()))
    floor = {"replies": sum(t.replies for t in tappers), "codes": merge(t.codes for t in tappers)}
    for t in tappers:
        t.lat, t.replies, t.codes, t.sent = lat_storm, 0, {}, {}
    cpu1 = time.process_time()
    await pace(tappers, "tap", args.rate, plan["storm_start"], plan["storm_end"], n)
    cpu_storm = time.process_time() - cpu1
    await asyncio.sleep(max(0.0, plan["checkout_at"] - time.time()))
    replies = sum(t.replies for t in tappers)  # taps answered (a late reply after this is not counted)
    buyers = [t for t in tappers if t.units]
    checkout = masked(TEXT, b'{"type":"checkout","id":"checkout"}')
    for t in buyers:
        t.transport.write(checkout)
    deadline = time.time() + 60
    while any(t.order is None for t in buyers) and time.time() < deadline:
        await asyncio.sleep(0.2)
        for t in buyers:
            if t.retry:
                t.retry = False
                t.transport.write(checkout)
    print(json.dumps({
        "floor": floor, "floor_lat": list(lat_floor),
        "replies": replies, "codes": merge(t.codes for t in tappers), "lat": list(lat_storm),
        "reserved": sum(t.units for t in tappers),
        "ordered": sum(t.order.get("quantity", 0) for t in buyers if t.order),
        "zero_at": [w.zero_at for w in watchers], "sold_out_ts": [w.sold_out_ts for w in watchers if w.sold_out_ts],
        "cpu_storm": cpu_storm, "cpu_total": time.process_time() - cpu0,
    }), flush=True)


def merge(counts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            out[key] = out.get(key, 0) + value
    return out


# -- the domain alone (no sockets) -----------------------------------------------------------


async def domain_main(count: int) -> dict[str, float]:
    """CPU microseconds per Commerce.tap, in process: runtime + shop + memory stock store + memory bus
    (one listener that drops what it gets), for each answer a storm produces."""
    import sqlite3

    from engine.bus.memory import MemoryBus
    from overlays.purchases.memory import MemoryPurchaseLog
    from overlays.records import SqliteRecords
    from overlays.runtime import Commerce
    from overlays.shop import ShopConfig
    from overlays.stock.memory import MemoryStockStore

    class Drop:
        def on_events(self, events: Any) -> None: ...
        def on_direct(self, user: str, message: Any) -> None: ...

    bus = MemoryBus()
    bus.subscribe(ROOM, Drop())
    commerce = Commerce(bus, stock=MemoryStockStore(), log=MemoryPurchaseLog(),
                        records=SqliteRecords(sqlite3.connect(":memory:")), config=ShopConfig(),
                        room_exists=lambda room: True)
    await commerce.put_product(ROOM, {"id": "mug", "title": "Mug", "price": 1200, "currency": "EUR", "stock": 10})
    now = time.time()
    await commerce.start_sale(ROOM, {"id": "later", "product_id": "mug", "price": 5, "quantity": 10,
                                     "starts_at": now + 3600, "duration": 60})
    await commerce.start_sale(ROOM, {"id": SALE, "product_id": "mug", "price": 5, "quantity": count,
                                     "per_user_limit": 1, "duration": 3600})

    async def timed(sale: str, prefix: str) -> float:
        users = [f"u{n}" for n in range(count)]
        ids = [f"{prefix}{n}" for n in range(count)]
        start = time.thread_time()  # CPU time: other processes on the core do not count
        for n in range(count):
            await commerce.tap(ROOM, users[n], ids[n], sale_id=sale)  # a refusal is returned, not raised
        return (time.thread_time() - start) * 1e6 / count

    return {
        "reserved": await timed(SALE, "a"),  # each user's first unit: all succeed
        "retried": await timed(SALE, "a"),  # the same request ids again: idempotent replays
        "limit_reached": await timed(SALE, "b"),  # the same users again: the limit is 1
        "sale_not_live": await timed("later", "c"),
    }


# -- orchestration ----------------------------------------------------------------------------


def http(port: int, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc, in seconds)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy(core: int) -> float:
    """Seconds core `core` has been busy (not idle or waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                ticks = [int(v) for v in line.split()[1:]]
                return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"no cpu{core} in /proc/stat")


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait until core 0 (the server's) is busy less than `limit` of one second, at most
    `timeout` seconds; returns the last busy share seen. Others share this machine."""
    deadline = time.time() + timeout
    while True:
        before = core_busy(0)
        time.sleep(1.0)
        busy = core_busy(0) - before
        if busy < limit or time.time() > deadline:
            return busy


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def start_server(args: argparse.Namespace, data_dir: str) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, ws_port = free_port(), free_port()
    command = [
        "taskset", "-c", "0", sys.executable, "-m", "engine.cli", "serve",
        "--http-port", str(http_port), "--ws-port", str(ws_port), "--data-dir", data_dir,
        "--secret", SECRET, "--admin-key", ADMIN, "--demo-room", ROOM, "--max-connections", "20000",
        "--max-ws-per-ip", "20000",
        # The limits the storm runs at: taps at --rate per connection are all admitted.
        "--tap-rate", str(args.rate * 1.5), "--tap-burst", str(int(args.rate * 2) + 5),
        "--msg-rate", str(args.rate * 2 + 10), "--msg-burst", str(int(args.rate * 4) + 20),
        *args.server_arg,
    ]
    with open(os.path.join(data_dir, "server.log"), "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=os.path.dirname(HERE))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            http(http_port, "GET", "/healthz")
            return proc, http_port, ws_port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    idle_before = wait_quiet(0.1, args.quiet)
    data_dir = tempfile.mkdtemp(prefix="tapstorm-")
    server, http_port, ws_port = start_server(args, data_dir)
    procs: list[subprocess.Popen[str]] = []
    try:
        http(http_port, "PUT", f"/api/rooms/{ROOM}/products/mug",
             {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 100})
        tap_subs = [f"tapper{i}" for i in range(args.tappers)]
        watch_subs = [f"watcher{i}" for i in range(args.watchers)]
        for k in range(args.procs):
            command = ["taskset", "-c", "1", sys.executable, os.path.join(HERE, "tapstorm.py"), "client",
                       "--port", str(ws_port), "--rate", str(args.rate),
                       "--tap-subs", ",".join(tap_subs[k :: args.procs]),
                       "--watch-subs", ",".join(watch_subs[k :: args.procs])]
            procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                          cwd=os.path.dirname(HERE),
                                          env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)}))
        for proc in procs:
            assert proc.stdout is not None
            json.loads(proc.stdout.readline())
        t0 = time.time() + 0.5
        plan = {"warmup_start": t0, "warmup_end": t0 + 1.5, "floor_start": t0 + 1.8}
        plan["floor_end"] = plan["floor_start"] + args.floor
        plan["storm_start"] = plan["floor_end"] + 1.0
        plan["storm_end"] = plan["storm_start"] + args.duration
        plan["checkout_at"] = plan["storm_end"] + 1.0
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(plan) + "\n")
            proc.stdin.flush()
        cpu = {}
        for phase in ("floor_start", "floor_end", "storm_start"):
            time.sleep(max(0.0, plan[phase] - time.time()))
            cpu[phase] = cpu_seconds(server.pid)
            cpu[phase + "_core0"] = core_busy(0)
        http(http_port, "POST", f"/api/rooms/{ROOM}/sales", {
            "id": SALE, "product_id": "mug", "price": 500, "quantity": args.quantity,
            "per_user_limit": args.limit, "starts_at": plan["storm_start"] + args.lead, "duration": 3600})
        spy = None
        if args.profile:
            spy = subprocess.Popen(["py-spy", "record", "-p", str(server.pid), "-d", str(int(args.duration)),
                                    "-r", "250", "-f", "raw", "-o", args.profile, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.0, plan["storm_end"] - time.time()))
        cpu["storm_end"] = cpu_seconds(server.pid)
        cpu["storm_end_core0"] = core_busy(0)
        if spy is not None:
            spy.wait(60)
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
            proc.wait(30)
        sale = http(http_port, "GET", f"/api/rooms/{ROOM}/sales/{SALE}")["sale"]
        sold, offset = 0, 0
        while True:
            orders = http(http_port, "GET", f"/api/rooms/{ROOM}/orders?limit=1000&offset={offset}")["orders"]
            sold += sum(line["quantity"] for o in orders for line in o["lines"] if line["sale"] == SALE)
            offset += len(orders)
            if len(orders) < 1000:
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    lat = [x for r in results for x in r["lat"]]
    floor_lat = [x for r in results for x in r["floor_lat"]]
    ts = [t for r in results for t in r["sold_out_ts"]]
    zero_at = [z for r in results for z in r["zero_at"]]
    seen = [z for z in zero_at if z is not None]
    sold_out_ts = min(ts) if ts else None
    delays = [(z - sold_out_ts) * 1000 for z in seen] if sold_out_ts else []
    return {
        "taps_per_s": sum(r["replies"] for r in results) / args.duration,
        "p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "max": max(lat, default=float("nan")),
        "floor_per_s": sum(r["floor"]["replies"] for r in results) / args.floor,
        "floor_p50": percentile(floor_lat, 0.5), "floor_p99": percentile(floor_lat, 0.99),
        "codes": merge(r["codes"] for r in results),
        "reserved": sum(r["reserved"] for r in results), "ordered": sum(r["ordered"] for r in results),
        "sold": sold, "remaining": sale["remaining"],
        "watchers_saw_zero": len(seen), "watchers": len(zero_at),
        "last_watcher_ms": max(delays, default=float("nan")), "median_watcher_ms": percentile(delays, 0.5),
        "client_cpu_storm": sum(r["cpu_storm"] for r in results) / args.duration,
        "server_cpu_storm": (cpu["storm_end"] - cpu["storm_start"]) / args.duration,
        # CPU of core 0 used by other processes while the storm ran (noise: ideally 0)
        "core0_others_storm": ((cpu["storm_end_core0"] - cpu["storm_start_core0"])
                               - (cpu["storm_end"] - cpu["storm_start"])) / args.duration,
        "core0_busy_before": idle_before,
        "server_cpu_floor": (cpu["floor_end"] - cpu["floor_start"]) / args.floor,
        "server_us_per_tap": (cpu["storm_end"] - cpu["storm_start"]) * 1e6 / max(1, sum(r["replies"] for r in results)),
        "server_us_per_floor": (cpu["floor_end"] - cpu["floor_start"]) * 1e6
        / max(1, sum(r["floor"]["replies"] for r in results)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "client", "domain"))
    parser.add_argument("--tappers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=15.0, help="taps per second per tapper")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--quantity", type=int, default=10000, help="units in the flash sale (Q)")
    parser.add_argument("--limit", type=int, default=20, help="per-user limit of the sale")
    parser.add_argument("--duration", type=float, default=8.0, help="storm seconds")
    parser.add_argument("--floor", type=float, default=3.0, help="floor (baseline) seconds")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds from storm start to sale start")
    parser.add_argument("--procs", type=int, default=4, help="client processes (all on core 1)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=120.0,
                        help="wait up to this many seconds for core 0 to be idle before each run")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `livecart serve` argument, repeatable (e.g. --server-arg=--fanout-slice=2048)")
    parser.add_argument("--profile", default="", help="py-spy the server during the storm into this file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tap-subs", default="")
    parser.add_argument("--watch-subs", default="")
    args = parser.parse_args()
    if args.mode == "client":
        uvloop.run(client_main(args))
        return
    if args.mode == "domain":
        print(json.dumps({"us_per_tap": uvloop.run(domain_main(args.quantity))}), flush=True)
        return
    runs = []
    for k in range(args.runs):
        result = one_run(args)
        print(json.dumps({"run": k + 1, **result}), flush=True)
        runs.append(result)
    keys = ("taps_per_s", "p50", "p99", "floor_per_s", "floor_p50", "floor_p99", "last_watcher_ms",
            "median_watcher_ms", "client_cpu_storm", "server_cpu_storm", "server_cpu_floor", "server_us_per_tap",
            "server_us_per_floor", "core0_others_storm")
    summary = {key: statistics.median([r[key] for r in runs if r[key] == r[key]] or [float("nan")]) for key in keys}
    summary["watchers_saw_zero"] = min(r["watchers_saw_zero"] for r in runs)
    summary["sold_equals_q"] = all(r["sold"] == args.quantity and r["remaining"] == 0 for r in runs)
    summary["p99_vs_floor"] = summary["p99"] / summary["floor_p99"]
    print(json.dumps({"median": summary}), flush=True)


if __name__ == "__main__":
    main()

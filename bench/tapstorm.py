"""Tap storm: a flash sale of Q units, N viewers tapping as fast as the tap limit allows, W more
viewers only watching the counter. Server on core 0, every client on core 1.

    python bench/tapstorm.py --tappers 1000 --rate 15 --watchers 1000 --quantity 10000 --runs 5

Each of the `--runs` rounds runs, one after the other and under the same load, the echo floors
(bench/echo_floor.py: a bare websockets server and a bare picows server, each answering every
message with a small JSON refusal) and then the engine, so the engine's CPU per tap is compared
with the faster floor's CPU per message from the same round (`x faster floor`).

Why dedicated asyncio clients rather than locust: the load side has one core for 2,000 sockets
and ~15,000 taps/s plus the room's events; a locust websocket user (gevent + websocket-client)
costs several times more per message and would measure itself. The clients here are bare uvloop
protocols (bench/fanout_client.RawSocket: hand-made RFC 6455 handshake and frame parsing) spread
over a few processes, that only `orjson.loads` acks, errors and frames that may show the zero.

Timeline of an echo floor's run: the same connections (tappers and idle watchers), a warm-up,
then the tappers send the storm's tap message at the same rate for `--duration` seconds.

Timeline of the engine's run (all connections open before it starts):
- in-engine floor: the tappers send an action type the server does not know, at the same rate,
  for `--floor` seconds. It takes the channel's whole path (rate limit, decode, error reply)
  without the commerce domain.
- storm: the host creates the sale to start `--lead` seconds later (so the storm opens with
  sale_not_live answers, like viewers hammering before a sale opens); taps go on for
  `--duration` seconds, through the sell-out and after it (sold_out / limit_reached answers).
- then each tapper checks out; units sold = the units in the room's orders, read over REST.

Each phase (a warm-up, the floor, the storm) ends only when every message sent in it has been
answered (or after `--drain` seconds), so no phase's backlog is answered, and paid for in CPU,
inside the next phase's window.

A tap answered ``unavailable`` (Redis slow or away: the tap may have run) is sent again with the
same request id, as a real client does, so "exactly Q sold" judges what real clients get; the
first answer's code is still counted. Latency is tap-to-ack at the client (first send to the final
reply, any reply). "Sold out seen" is, per watcher,
the first frame saying remaining 0 (the discrete sale.sold_out or the coalesced sale.remaining),
measured from the server's publish time of sale.sold_out (`ts` on the event).

Rates and CPU share one window: "answered per second" counts the replies that reached the clients
between the phase's start and end, the server's CPU and the other load on core 0 are read at the
same two moments (bench/measure.py), and CPU per message is the CPU share over the rate, so each
row's µs/tap is its CPU column divided by its rate column.

With `--nodes K` each round runs the engine on the memory backend, then K nodes sharing one Redis
(`--redis-url`, or a redis-server of the bench's own on core 1), no echo floors, and reports the
taps/s of both, the units sold by both, and Redis's round trips, commands and CPU per tap read from
`INFO commandstats` and `INFO cpu` before and after the storm (bench/cluster.py, bench/redis_meter.py):

    python bench/tapstorm.py --nodes 2 --runs 3 --name tapstorm-nodes

Writes bench/results/NAME.{md,json} after every round, with commit, command and machine: the
storm's table (one row per run, then the medians), the echo floors' table (each run's floors, the
ratio, and core 0's other load in every measured window) and the targets judged on the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable
from typing import Any

import cluster
import orjson
import uvloop
from fanout_client import TEXT, RawSocket, masked, upgrade_request
from measure import (
    CoreShare,
    CoreWindow,
    core_busy_share,
    fmt,
    free_port,
    markdown_table,
    median,
    percentile,
    prioritise,
    record,
    write_results,
)
from redis_meter import RedisMeter, RedisUsage

from signaling.tokens import mint

SECRET = "tapstorm-secret-" + "x" * 32
ADMIN = "tapstorm-admin"
ROOM = "bench"
SALE = "flash"
#: Seconds before a tap answered ``unavailable`` is sent again with the same request id.
RETRY_AFTER = 0.05
HTTP_ATTEMPTS = 25  # an admin call answered 503 is sent again, 0.2 s apart, about 5 s in all
HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = os.path.join(HERE, "echo_floor.py")
ECHO_FLOORS = ("websockets", "picows")


# -- load side (one process per slice of clients) --------------------------------------------


class Tapper(RawSocket):
    """Sends taps (or floor actions) on command; times every reply by request id."""

    def __init__(self, request: bytes, lat: array) -> None:
        super().__init__(request)
        self.lat = lat
        self.sent: dict[int, float] = {}
        self.replies = 0
        self.window = (0.0, 0.0)  # wall-clock phase: replies arriving inside it count in `in_window`
        self.in_window = 0
        self.units = 0
        self.codes: dict[str, int] = {}
        self.order: dict[str, Any] | None = None
        self.retry = False  # the checkout was rate limited or unavailable: send it again

    def send(self, n: int, kind: str) -> None:
        self.sent[n] = time.perf_counter()
        self.write(n, kind)

    def write(self, n: int, kind: str) -> None:
        if self.closed or self.transport.is_closing():  # the server closed it (counted in `closed`)
            return
        body = (b'{"type":"tap","id":%d,"sale_id":"flash"}' if kind == "tap" else b'{"type":"floor","id":%d}') % n
        self.transport.write(masked(TEXT, body))

    def tap_again(self, n: int) -> None:
        """A tap answered ``unavailable`` may have run in Redis: a real client sends it again with
        the same request id (docs/API.md), and the answer to that one (its first outcome, if it did
        run) is the tap's; its latency counts from the first send."""
        if n in self.sent and not self.transport.is_closing():
            self.write(n, "tap")

    def on_text(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"type":"ack"'):
            reply = orjson.loads(payload)
            if "order" in reply:
                self.order = reply["order"]
                return
            self.units = max(self.units, reply["cart"]["quantity"])  # nobody uncarts: the cart only grows
            self.codes["ok"] = self.codes.get("ok", 0) + 1
        elif payload.startswith(b'{"type":"error"'):
            reply = orjson.loads(payload)
            self.codes[reply["code"]] = self.codes.get(reply["code"], 0) + 1
            again = reply["code"] in ("rate_limited", "unavailable")
            if reply.get("re") == "checkout":
                self.order = None if again else {}
                self.retry = again
                return
            if reply["code"] == "unavailable" and reply.get("re") in self.sent:
                asyncio.get_running_loop().call_later(RETRY_AFTER, self.tap_again, reply["re"])
                return
        else:
            return
        sent = self.sent.pop(reply.get("re"), None)
        if sent is not None:
            self.lat.append((time.perf_counter() - sent) * 1000)
            self.replies += 1
            if self.window[0] <= now < self.window[1]:
                self.in_window += 1


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


async def drained(tappers: list[Tapper], timeout: float) -> bool:
    """Wait until every message sent has its answer (at most ``timeout`` s): the next phase starts clean."""
    deadline = time.time() + timeout
    while any(t.sent for t in tappers):
        if time.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def client_main(args: argparse.Namespace) -> None:
    """Open the sockets, then run each phase the orchestrator sends (one JSON line each) and report it."""
    loop = asyncio.get_running_loop()
    lat = array("d")
    tappers = await open_all(args.port, args.tap_subs.split(",") if args.tap_subs else [], lambda r: Tapper(r, lat))
    watchers = await open_all(args.port, args.watch_subs.split(",") if args.watch_subs else [], Watcher)
    print(json.dumps({"ready": len(tappers) + len(watchers)}), flush=True)
    n = 1
    while True:
        step = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
        if step["phase"] == "checkout":
            break
        del lat[:]
        for t in tappers:
            t.replies, t.codes, t.sent = 0, {}, {}
            t.window, t.in_window = (step["start"], step["end"]), 0
        cpu = time.process_time()
        n = await pace(tappers, step["kind"], args.rate, step["start"], step["end"], n)
        cpu = time.process_time() - cpu
        ok = await drained(tappers, args.drain)
        await report(loop, {
            "phase": step["phase"], "drained": ok, "cpu": cpu, "lat": list(lat),
            "replies": sum(t.replies for t in tappers),  # every answer, in the window or after it
            "in_window": sum(t.in_window for t in tappers),  # answers that arrived within the window
            "codes": merge(t.codes for t in tappers),
        })
    buyers = [t for t in tappers if t.units and not (t.closed or t.transport.is_closing())]
    checkout = masked(TEXT, b'{"type":"checkout","id":"checkout"}')
    for t in buyers:
        t.transport.write(checkout)
    deadline = time.time() + 60
    while any(t.order is None for t in buyers) and time.time() < deadline:
        await asyncio.sleep(0.2)
        for t in buyers:
            if t.retry and not t.transport.is_closing():
                t.retry = False
                t.transport.write(checkout)
    await report(loop, {
        "reserved": sum(t.units for t in tappers),
        "ordered": sum(t.order.get("quantity", 0) for t in buyers if t.order),
        "closed": merge({str(t.close_code): 1} for t in (*tappers, *watchers) if t.closed),
        "zero_at": [w.zero_at for w in watchers], "sold_out_ts": [w.sold_out_ts for w in watchers if w.sold_out_ts],
    })


async def report(loop: asyncio.AbstractEventLoop, body: dict[str, Any]) -> None:
    """Write one report line from a thread. The orchestrator reads the clients' lines one client
    after the other, and a phase's line (every latency) is larger than a pipe holds: written from
    the loop, it stopped this client's loop until its turn came, its sockets went unread, and the
    server rightly closed them as too slow (500 connections of one client, cut at once)."""
    line = json.dumps(body) + "\n"
    await loop.run_in_executor(None, _write_line, line)


def _write_line(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


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
    from engine.bus.memory import MemoryBus
    from engine.storage import Database
    from overlays.purchases.sqlite import SqlitePurchaseLog
    from overlays.records import SqliteRecords
    from overlays.runtime import Commerce
    from overlays.shop import ShopConfig
    from overlays.stock.memory import MemoryStockStore

    class Drop:
        def on_events(self, events: Any) -> None: ...
        def on_direct(self, user: str, message: Any) -> None: ...

    bus = MemoryBus()
    bus.subscribe(ROOM, Drop())
    db = Database(":memory:")
    purchase_log = SqlitePurchaseLog(db)
    commerce = Commerce(bus, stock=MemoryStockStore(), log=purchase_log,
                        records=SqliteRecords(db, purchase_log), config=ShopConfig(),
                        room_exists=lambda room: True)
    await commerce.put_product(ROOM, {"id": "mug", "title": "Mug", "price": 1200, "currency": "EUR", "stock": 10})
    now = time.time()
    await commerce.start_sale(ROOM, {"id": "later", "product_id": "mug", "price": 5, "quantity": 10,
                                     "starts_at": now + 3600, "duration": 60})
    await commerce.start_sale(ROOM, {"id": SALE, "product_id": "mug", "price": 5, "quantity": count,
                                     "per_user_limit": 1, "duration": 3600})

    async def timed(sale: str, prefix: str, who: str = "u") -> float:
        users = [f"{who}{n}" for n in range(count)]
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
        "sold_out": await timed(SALE, "d", "v"),  # other users: the first `count` took every unit
    }


# -- orchestration ----------------------------------------------------------------------------


def http(port: int, method: str, path: str, body: Any = None) -> Any:
    """One admin call; a 503 (``unavailable``: a node's Redis pool busy for a moment, as while
    2,000 viewers join at once) is sent again after a short wait, as a host's studio would."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    for attempt in range(HTTP_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == HTTP_ATTEMPTS - 1:
                raise
            time.sleep(0.2)


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait until core 0 (the server's) is busy less than `limit` of one second, at most
    `timeout` seconds; returns the last busy share seen. Others share this machine."""
    deadline = time.time() + timeout
    while True:
        busy = core_busy_share(0, 1.0)
        if busy < limit or time.time() > deadline:
            return busy


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(args: argparse.Namespace, data_dir: str, cluster_flags: list[str] | None = None,
                 core: int = 0) -> tuple[subprocess.Popen[bytes], int, int]:
    """One engine pinned to ``core``; with ``cluster_flags``, a node of a cluster on Redis."""
    http_port, ws_port = free_port(), free_port()
    command = [
        "taskset", "-c", str(core), sys.executable, "-m", "engine.cli", "serve",
        "--http-port", str(http_port), "--ws-port", str(ws_port), "--data-dir", data_dir,
        "--secret", SECRET, "--admin-key", ADMIN, "--demo-room", ROOM, "--max-connections", "20000",
        "--max-ws-per-ip", "20000",
        # The limits the storm runs at: taps at --rate per connection are all admitted.
        "--tap-rate", str(args.rate * 1.5), "--tap-burst", str(int(args.rate * 2) + 5),
        "--msg-rate", str(args.rate * 2 + 10), "--msg-burst", str(int(args.rate * 4) + 20),
        *(cluster_flags or []), *args.server_arg,
    ]
    with open(os.path.join(data_dir, "server.log"), "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=os.path.dirname(HERE),
                                start_new_session=True)
    prioritise(proc.pid, args.server_nice)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            http(http_port, "GET", "/healthz")
            return proc, http_port, ws_port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def start_echo(kind: str, args: argparse.Namespace, log_path: str) -> tuple[subprocess.Popen[bytes], int]:
    """An echo floor (bench/echo_floor.py) pinned to core 0, with the engine's nice value."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, ECHO, kind, "--port", str(port)],
                                stdout=log, stderr=log, cwd=os.path.dirname(HERE), start_new_session=True)
    prioritise(proc.pid, args.server_nice)
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} echo floor did not start (log: {log_path})")


class Load:
    """The client processes of one run, all on core 1: the tappers and watchers, in `--procs` slices.

    The same load drives the echo floors and the engine: same connections, same tap message,
    same pace. Each phase's server CPU and the other load on core 0 are read over its window.
    """

    def __init__(self, args: argparse.Namespace, ws_ports: int | list[int], server_pids: int | list[int],
                 meter: RedisMeter | None = None, every_pid: list[int] | None = None) -> None:
        """Client process k opens its sockets on the k-th (mod count) of ``ws_ports`` (the nodes);
        ``server_pids`` are the processes on core 0, ``every_pid`` every node's wherever pinned."""
        ports = [ws_ports] if isinstance(ws_ports, int) else ws_ports
        self.procs: list[subprocess.Popen[str]] = []
        tap_subs = [f"tapper{i}" for i in range(args.tappers)]
        watch_subs = [f"watcher{i}" for i in range(args.watchers)]
        for k in range(args.procs):
            command = ["taskset", "-c", "1", sys.executable, os.path.join(HERE, "tapstorm.py"), "client",
                       "--port", str(ports[k % len(ports)]), "--rate", str(args.rate), "--drain", str(args.drain),
                       "--tap-subs", ",".join(tap_subs[k :: args.procs]),
                       "--watch-subs", ",".join(watch_subs[k :: args.procs])]
            self.procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                               cwd=os.path.dirname(HERE),
                                               env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)}))
        for reply in self._read_all():
            if "ready" not in reply:
                raise RuntimeError(f"a client process did not connect: {reply}")
        self.window = CoreWindow(server_pids, core=0)
        self.load_core = CoreWindow(None, core=1)  # the clients' core: a full one may delay answers too
        self.every_node = CoreWindow(every_pid if every_pid is not None else server_pids, core=0)
        self.cpu: dict[str, float] = {}  # per phase: every node's CPU seconds in its window
        self.meter = meter
        self.redis: dict[str, RedisUsage] = {}  # per phase, with a meter: what Redis did in its window

    def _tell_all(self, step: dict[str, Any]) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(step) + "\n")
            proc.stdin.flush()

    def _read_all(self) -> list[dict[str, Any]]:
        replies = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client process {proc.pid} ended (exit {proc.wait(5)})")
            replies.append(json.loads(line))
        return replies

    def phase(self, name: str, kind: str, seconds: float,
              on_start: Callable[[float], None] | None = None) -> tuple[list[dict[str, Any]], CoreShare, float]:
        """Every tapper sends ``kind`` for ``seconds``; the reports once all answers are in, core 0's
        shares and core 1's busy share (clients and everything else on it) over the window.

        ``on_start(start)`` runs at the window's start (the storm creates its sale there)."""
        start = time.time() + 0.3
        self._tell_all({"phase": name, "kind": kind, "start": start, "end": start + seconds})
        time.sleep(max(0.0, start - time.time()))
        self.window.start()
        self.load_core.start()
        self.every_node.start()
        if self.meter is not None:
            self.meter.start()
        if on_start is not None:
            on_start(start)
        time.sleep(max(0.0, start + seconds - time.time()))
        share = self.window.stop()
        load_busy = self.load_core.stop().busy
        self.cpu[name] = self.every_node.stop().cpu
        if self.meter is not None:
            self.redis[name] = self.meter.stop()
        return self._read_all(), share, load_busy

    def finish(self) -> list[dict[str, Any]]:
        """Every tapper that reserved checks out; the reports (units reserved and ordered, watchers)."""
        self._tell_all({"phase": "checkout"})
        results = self._read_all()
        for proc in self.procs:
            proc.wait(30)
        return results

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def echo_run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One echo floor under the storm's load: a warm-up, then taps for the storm's `--duration`."""
    idle_before = wait_quiet(0.1, args.quiet)
    log_dir = tempfile.mkdtemp(prefix=f"tapstorm-{kind}-")
    server, port = start_echo(kind, args, os.path.join(log_dir, "server.log"))
    load: Load | None = None
    try:
        load = Load(args, port, server.pid)
        load.phase("warm-up", "tap", 1.5)
        reports, core, core1 = load.phase(kind, "tap", args.duration)
        load.finish()
    finally:
        if load is not None:
            load.kill()
        stop_server(server)
    lat = [x for r in reports for x in r["lat"]]
    per_s = sum(r["in_window"] for r in reports) / args.duration
    return {
        "msgs_per_s": per_s,  # answers that reached the clients within the window, per second
        "answered": sum(r["replies"] for r in reports),
        "drained": all(r["drained"] for r in reports),
        "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat, default=None),
        "server_cpu": core.server, "core0_others": core.others, "core0_busy_before": idle_before,
        "core1_busy": core1,
        "server_us_per_msg": core.server * 1e6 / per_s if per_s else None,
        "codes": merge(r["codes"] for r in reports),
    }


def one_run(args: argparse.Namespace, redis_url: str = "") -> dict[str, Any]:
    """The engine: a warm-up, the in-engine floor (an unknown action), then the storm and checkout.

    With ``redis_url``, --nodes nodes share it (a fresh key prefix): the tappers and watchers are
    spread over them, the sale is made and the orders are read through the first, and Redis's
    commands and CPU are read over the floor's and the storm's windows."""
    idle_before = wait_quiet(0.1, args.quiet)
    data_dir = tempfile.mkdtemp(prefix="tapstorm-")
    servers: list[subprocess.Popen[bytes]] = []
    ws_ports: list[int] = []
    http_ports: list[int] = []
    load: Load | None = None
    meter = RedisMeter(redis_url) if redis_url else None
    spies: list[subprocess.Popen[bytes]] = []
    try:
        prefix = cluster.new_prefix()
        for i in range(args.nodes if redis_url else 1):  # one after the other: the first creates the room
            node_dir = os.path.join(data_dir, f"node{i}")
            os.mkdir(node_dir)
            proc, port, ws_port = start_server(args, node_dir, cluster.node_flags(redis_url, prefix, i)
                                               if redis_url else None, cluster.node_core(args, i))
            servers.append(proc)
            http_ports.append(port)
            ws_ports.append(ws_port)
        server, http_port = servers[0], http_ports[0]
        http(http_port, "PUT", f"/api/rooms/{ROOM}/products/mug",
             {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 100})
        on_core0 = [proc.pid for i, proc in enumerate(servers) if cluster.node_core(args, i) == 0]
        load = Load(args, ws_ports, on_core0, meter, [proc.pid for proc in servers])

        def open_sale(start: float) -> None:
            http(http_port, "POST", f"/api/rooms/{ROOM}/sales", {
                "id": SALE, "product_id": "mug", "price": 500, "quantity": args.quantity,
                "per_user_limit": args.limit, "starts_at": start + args.lead, "duration": 3600})
            if args.profile:
                spies.append(subprocess.Popen(
                    ["py-spy", "record", "-p", str(server.pid), "-d", str(int(args.duration)), "-r", "250",
                     "-f", "raw", "-o", args.profile, "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        load.phase("warm-up", "floor", 1.5)
        floor, floor_core, _ = load.phase("floor", "floor", args.floor)
        storm, storm_core, storm_core1 = load.phase("storm", "tap", args.duration, on_start=open_sale)
        for spy in spies:
            spy.wait(60)
        results = load.finish()
        sale = http(http_port, "GET", f"/api/rooms/{ROOM}/sales/{SALE}")["sale"]
        sold, offset = 0, 0
        while True:
            orders = http(http_port, "GET", f"/api/rooms/{ROOM}/orders?limit=1000&offset={offset}")["orders"]
            sold += sum(line["quantity"] for o in orders for line in o["lines"] if line["sale"] == SALE)
            offset += len(orders)
            if len(orders) < 1000:
                break
    finally:
        if load is not None:
            load.kill()
        for proc in servers:
            stop_server(proc)
        if meter is not None:
            meter.close()
    lat = [x for r in storm for x in r["lat"]]
    floor_lat = [x for r in floor for x in r["lat"]]
    ts = [t for r in results for t in r["sold_out_ts"]]
    zero_at = [z for r in results for z in r["zero_at"]]
    seen = [z for z in zero_at if z is not None]
    sold_out_ts = min(ts) if ts else None
    delays = [(z - sold_out_ts) * 1000 for z in seen] if sold_out_ts else []
    taps_per_s = sum(r["in_window"] for r in storm) / args.duration
    floor_per_s = sum(r["in_window"] for r in floor) / args.floor
    return {
        "taps_per_s": taps_per_s,  # answers that reached the clients within the storm window, per second
        "taps_answered": sum(r["replies"] for r in storm),
        "drained": all(r["drained"] for r in floor + storm),  # every message answered before the next phase
        # every tap of the storm, before the sale opens, through the sell-out and after it
        "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat, default=None),
        "floor_per_s": floor_per_s,
        "floor_p50": percentile(floor_lat, 50), "floor_p99": percentile(floor_lat, 99),
        "codes": merge(r["codes"] for r in storm),
        "reserved": sum(r["reserved"] for r in results), "ordered": sum(r["ordered"] for r in results),
        "closed": merge(r["closed"] for r in results),  # connections the server closed, by close code
        "sold": sold, "remaining": sale["remaining"],
        "watchers_saw_zero": len(seen), "watchers": len(zero_at),
        "last_watcher_ms": max(delays, default=None), "median_watcher_ms": percentile(delays, 50),
        "client_cpu_storm": sum(r["cpu"] for r in storm) / args.duration,
        # shares of core 0 (1.0 = the whole core) over the storm and the floor windows
        "server_cpu_storm": storm_core.server,
        "core0_others_storm": storm_core.others,
        "core0_busy_before": idle_before,
        "core1_busy_storm": storm_core1,  # the clients' core, busy share (1.0 = all) over the storm
        "server_cpu_floor": floor_core.server,
        "core0_others_floor": floor_core.others,
        # CPU share over rate: the same window on both sides
        "server_us_per_tap": storm_core.server * 1e6 / taps_per_s if taps_per_s else None,
        "server_us_per_floor": floor_core.server * 1e6 / floor_per_s if floor_per_s else None,
        "nodes": len(servers),
        "nodes_cpu_storm": load.cpu["storm"] / args.duration,  # every node's, wherever pinned (1.0 = one core)
        "nodes_us_per_tap": load.cpu["storm"] * 1e6 / (taps_per_s * args.duration) if taps_per_s else None,
        **redis_figures(load.redis, taps_per_s * args.duration, args.duration, args.floor),
    }


def redis_figures(usage: dict[str, RedisUsage], taps: float, storm_s: float, floor_s: float) -> dict[str, Any]:
    """What Redis did per tap answered in the storm's window: commands (every command counted, those
    run inside scripts too; ``EVALSHA`` = scripts called, one round trip each) and CPU; and its
    background in the floor's window (no commerce: heartbeats, leases, ticks), per second."""
    if "storm" not in usage:
        return {}
    storm, floor = usage["storm"], usage.get("floor")
    per_tap = (lambda v: v / taps) if taps else (lambda v: None)
    background = floor.calls("evalsha") / floor_s * storm_s if floor else 0.0
    return {
        "redis_evalsha_per_tap": per_tap(storm.calls("evalsha")),
        # the taps' own: less the bus's publish scripts (one XADD each; no order is placed in the storm)
        # and the background's rate over the storm's length
        "redis_tap_evalsha_per_tap": per_tap(storm.calls("evalsha") - storm.calls("xadd") - background),
        # PUBLISH outside a script (a bus script publishes once, beside its XADD): a message to one user
        "redis_direct_publish_per_tap": per_tap(storm.calls("publish") - storm.calls("xadd")),
        "redis_round_trips_per_tap": per_tap(storm.calls("evalsha") + storm.calls("publish")
                                             - 2 * storm.calls("xadd") - background),
        "redis_commands_per_tap": per_tap(storm.total),
        "redis_cpu_storm": storm.cpu / storm_s,  # share of one core
        "redis_cpu_us_per_tap": per_tap(storm.cpu * 1e6),
        "redis_evalsha_per_s_floor": floor.calls("evalsha") / floor_s if floor else None,
        "redis_commands_per_s_floor": floor.total / floor_s if floor else None,
        "redis_cpu_floor": floor.cpu / floor_s if floor else None,
        "redis_commands_storm": storm.commands,
        "redis_commands_floor": floor.commands if floor else None,
    }


def one_round(args: argparse.Namespace) -> dict[str, Any]:
    """The echo floors, then the engine, one after the other under the same load: one row of the tables."""
    floors = {kind: echo_run(kind, args) for kind in args.floors}
    result = one_run(args)
    costs = {kind: f["server_us_per_msg"] for kind, f in floors.items() if f["server_us_per_msg"]}
    fastest = min(costs, key=lambda kind: costs[kind]) if costs else None
    tap = result["server_us_per_tap"]
    return {
        **result,
        "floors": floors,
        "fastest_floor": fastest,
        "fastest_floor_us": costs[fastest] if fastest else None,
        "x_fastest_floor": tap / costs[fastest] if fastest and tap else None,
    }


def storm_table(runs: list[dict[str, Any]], quantity: int) -> str:
    """One row per run, then the medians of each column over the runs."""
    columns = (
        ("taps/s answered in window", "taps_per_s", 0), ("p50 ms", "p50", 1), ("p99 ms", "p99", 1),
        ("floor msgs/s", "floor_per_s", 0), ("floor p99 ms", "floor_p99", 1),
        ("last watcher saw 0, ms", "last_watcher_ms", 0), ("server CPU (of core 0)", "server_cpu_storm", 2),
        ("others on core 0", "core0_others_storm", 2), ("server µs/tap", "server_us_per_tap", 1),
        ("server CPU in floor", "server_cpu_floor", 2), ("others on core 0 in floor", "core0_others_floor", 2),
        ("server µs/floor msg", "server_us_per_floor", 1),
    )
    rows = []
    for k, r in enumerate(runs):
        rows.append([k + 1, f"{r['sold']:,} / {quantity:,}", f"{r['watchers_saw_zero']:,} / {r['watchers']:,}",
                     "yes" if r["drained"] else "no", *(fmt(r[key], digits) for _, key, digits in columns)])
    rows.append(["median", "", "", "", *(fmt(median(r[key] for r in runs), digits) for _, key, digits in columns)])
    return markdown_table(
        ["run", "sold / Q", "watchers saw 0", "all answered", *(title for title, _, _ in columns)], rows)


def floors_table(runs: list[dict[str, Any]], kinds: list[str]) -> str:
    """Per run: each echo floor's cost and latency, the engine's tap against the faster floor, and
    core 0's disturbance (the busy share in the second before each server started, and the other
    load in each measured window); then the medians."""

    def floor(r: dict[str, Any], kind: str, key: str) -> Any:
        return r["floors"].get(kind, {}).get(key)

    def triple(values: list[Any], digits: int | list[int]) -> str:
        places = digits if isinstance(digits, list) else [digits] * len(values)
        return " / ".join(fmt(v, d) for v, d in zip(values, places, strict=True))

    def row(label: Any, get: Callable[[str, str], Any], ratio: Any, fastest: str, answered: str) -> list[Any]:
        return [
            label,
            *(fmt(get(kind, "server_us_per_msg"), 1) for kind in kinds),
            fmt(get("storm", "server_us_per_tap"), 1), fastest, fmt(ratio, 2),
            *(triple([get(kind, "msgs_per_s"), get(kind, "p50"), get(kind, "p99")], [0, 1, 1]) for kind in kinds),
            triple([get(kind, "core0_busy_before") for kind in (*kinds, "storm")], 2),
            triple([get(kind, "core1_busy") for kind in kinds] + [get("storm", "core1_busy_storm")], 2),
            triple([get(kind, "core0_others") for kind in kinds]
                   + [get("storm", "core0_others_storm"), get("storm", "core0_others_floor")], 2),
            answered,
        ]

    rows = []
    for k, r in enumerate(runs):
        rows.append(row(k + 1, lambda kind, key, r=r: r.get(key) if kind == "storm" else floor(r, kind, key),
                        r["x_fastest_floor"], r["fastest_floor"] or "-",
                        "yes" if all(f["drained"] for f in r["floors"].values()) else "no"))
    rows.append(row("median", lambda kind, key: median(
        (r.get(key) if kind == "storm" else floor(r, kind, key)) for r in runs),
        median(r["x_fastest_floor"] for r in runs), "", ""))
    return markdown_table([
        "run", *(f"{kind} echo µs/msg" for kind in kinds), "engine µs/tap", "faster floor", "x faster floor",
        *(f"{kind} msgs/s / p50 / p99 ms" for kind in kinds),
        f"core 0 busy before start ({' / '.join([*kinds, 'engine'])})",
        f"core 1 (clients) busy ({' / '.join([*kinds, 'storm'])})",
        f"others on core 0 ({' / '.join([*kinds, 'storm', 'in-engine floor'])})",
        "floors all answered",
    ], rows)


def domain_table(runs: list[dict[str, float]]) -> str:
    answers = list(runs[0])
    rows = [[answer, fmt(median(r[answer] for r in runs), 1), ", ".join(fmt(r[answer], 1) for r in runs)]
            for answer in answers]
    return markdown_table(["tap answer", "CPU µs per tap (median)", "per run"], rows)


def verdict(ok: bool | None) -> str:
    return "not judged" if ok is None else "met" if ok else "not met"


def targets(runs: list[dict[str, Any]], quantity: int) -> str:
    """The storm's targets, judged on the medians over this command's runs (nearest-rank)."""
    p99 = median(r["p99"] for r in runs)
    last = median(r["last_watcher_ms"] for r in runs)
    ratio = median(r["x_fastest_floor"] for r in runs)
    exact = sum(1 for r in runs if r["sold"] == quantity and r["remaining"] == 0)
    all_saw = sum(1 for r in runs if r["watchers_saw_zero"] == r["watchers"])
    others = [r[key] for r in runs for key in ("core0_others_storm", "core0_others_floor")]
    others += [f["core0_others"] for r in runs for f in r["floors"].values()]
    busiest = max(others, default=None)
    return "\n".join([
        f"Targets, on the medians of {len(runs)} run(s):",
        "",
        f"- p99 tap-to-ack over the whole storm (before the sale opens, the sell-out and after it) < 25 ms: "
        f"{fmt(p99, 1)} ms, {verdict(None if p99 is None else p99 < 25)}",
        f"- exactly Q = {quantity:,} sold, remaining 0: in {exact} of {len(runs)} run(s), "
        f"{verdict(exact == len(runs))}",
        f"- the last watcher sees sold out within 250 ms: {fmt(last, 0)} ms "
        f"(all watchers saw it in {all_saw} of {len(runs)} run(s)), "
        f"{verdict(None if last is None or all_saw < len(runs) else last <= 250)}",
        f"- server CPU per tap <= 1.25x the faster echo floor's per message: "
        f"{fmt(ratio, 2) + 'x' if ratio is not None else '-'}, "
        f"{verdict(None if ratio is None else ratio <= 1.25)}",
        f"- the most other load on core 0 in any measured window: {fmt(busiest, 2)} of the core "
        "(the targets assume a quiet core)",
    ])


def cluster_round(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    """One round of --nodes: the memory-backed engine, then the K nodes on Redis, under the same load."""
    memory = one_run(args)
    nodes = one_run(args, redis_url)
    rates = memory["taps_per_s"], nodes["taps_per_s"]
    return {"memory": memory, "redis": nodes, "x_memory_rate": rates[1] / rates[0] if rates[0] else None}


def cluster_table(rounds: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One row per round (memory node, then the K Redis nodes), the medians, the targets judged on them."""
    memory_cols = (("taps/s", "taps_per_s", 0), ("p50 / p99 ms", ("p50", "p99"), 1),
                   ("nodes µs/tap", "nodes_us_per_tap", 1))
    redis_cols = (
        ("EVALSHA per tap: all / the taps' own", ("redis_evalsha_per_tap", "redis_tap_evalsha_per_tap"), 3),
        ("direct PUBLISH per tap", "redis_direct_publish_per_tap", 3),
        ("round trips per tap", "redis_round_trips_per_tap", 3),
        ("Redis commands per tap", "redis_commands_per_tap", 2),
        ("Redis CPU (of a core)", "redis_cpu_storm", 2), ("Redis CPU µs/tap", "redis_cpu_us_per_tap", 1),
        ("background EVALSHA/s / commands/s", ("redis_evalsha_per_s_floor", "redis_commands_per_s_floor"), 0),
        ("others on core 0", "core0_others_storm", 2))

    def cell(side: dict[str, Any] | None, key: str | tuple[str, ...], digits: int,
             pick: Callable[[str], Any] | None = None) -> str:
        get = pick or (lambda k: side.get(k) if side else None)
        return " / ".join(fmt(get(k), digits) for k in (key if isinstance(key, tuple) else (key,)))

    def sold(side: dict[str, Any]) -> str:
        return f"{side['sold']:,} / {args.quantity:,}"

    rows = []
    for k, r in enumerate(rounds):
        rows.append([k + 1, sold(r["memory"]), sold(r["redis"]),
                     *(cell(r["memory"], key, d) for _, key, d in memory_cols),
                     *(cell(r["redis"], key, d) for _, key, d in memory_cols), fmt(r["x_memory_rate"], 2),
                     *(cell(r["redis"], key, d) for _, key, d in redis_cols)])

    def med(side: str) -> Callable[[str], Any]:
        return lambda key: median(r[side].get(key) for r in rounds)

    rows.append(["median", "", "", *(cell(None, key, d, med("memory")) for _, key, d in memory_cols),
                 *(cell(None, key, d, med("redis")) for _, key, d in memory_cols),
                 fmt(median(r["x_memory_rate"] for r in rounds), 2),
                 *(cell(None, key, d, med("redis")) for _, key, d in redis_cols)])
    header = ["run", "sold / Q, memory", f"sold / Q, {args.nodes} nodes",
              *(f"memory {title}" for title, _, _ in memory_cols), *(f"Redis {title}" for title, _, _ in memory_cols),
              "Redis rate / memory rate", *(title for title, _, _ in redis_cols)]
    ratio = median(r["x_memory_rate"] for r in rounds)
    exact = sum(1 for r in rounds for side in ("memory", "redis")
                if r[side]["sold"] == args.quantity and r[side]["remaining"] == 0)
    own = med("redis")("redis_tap_evalsha_per_tap")
    direct = med("redis")("redis_direct_publish_per_tap")
    closed = {side: merge(r[side].get("closed", {}) for r in rounds) for side in ("memory", "redis")}
    us_tap = med("redis")("redis_cpu_us_per_tap")
    return "\n".join([
        cluster.core_split(args),
        "",
        f"Each round runs the memory-backed engine (one node), then {args.nodes} nodes sharing one Redis, under "
        f"the same load ({args.tappers:,} tappers at {args.rate:g} taps/s each, {args.watchers:,} watchers, spread "
        "over the nodes; the sale is made and the orders are read through the first node). Taps/s: answers that "
        "reached the clients within the storm's window. Nodes µs/tap: every node's CPU over the storm window per "
        "tap answered. Redis figures over the same window: `INFO commandstats` calls (commands run inside scripts "
        "included; one `EVALSHA` is one round trip; a bus event is one publish script, one XADD inside it) and "
        "`INFO cpu` (used_cpu_sys + used_cpu_user), per tap answered; a direct PUBLISH (outside a script) is "
        "a message to one user (the tapper's cart); "
        "the background is what Redis served per second in the in-engine floor's window (no commerce: "
        "heartbeats, leases, ticks).",
        "",
        markdown_table(header, rows),
        "",
        f"Targets, on the medians of {len(rounds)} round(s):",
        "",
        f"- taps/s with Redis at least half the memory backend's: {fmt(ratio, 2)}x, "
        f"{verdict(None if ratio is None else ratio >= 0.5)}",
        f"- exactly Q = {args.quantity:,} sold, remaining 0: in {exact} of {2 * len(rounds)} runs (memory and "
        f"Redis), {verdict(exact == 2 * len(rounds))}",
        f"- Redis round trips a tap waits for (its EVALSHA calls per tap answered, less the bus's publish scripts "
        f"and the background's rate): {fmt(own, 3)}, {verdict(None if own is None else abs(own - 1) <= 0.02)} "
        f"(target: one); beside them {fmt(direct, 3)} direct PUBLISH per tap (the reserving tapper's `cart.added` "
        "for its connections on other nodes), pipelined with other calls and not waited for",
        f"- connections the server closed, by close code, over all rounds: memory {closed['memory'] or 'none'}, "
        f"Redis {closed['redis'] or 'none'}",
        f"- Redis CPU per tap: {fmt(us_tap, 1)} µs, so one Redis core serves about "
        f"{fmt(1e6 / us_tap if us_tap else None, 0)} taps/s of this storm's mix",
    ])


def cluster_main(args: argparse.Namespace, run: dict[str, Any]) -> None:
    """--nodes K: rounds of the memory node and the K Redis nodes; results after every round."""
    run["cores"] = cluster.core_split(args)
    print(run["cores"], flush=True)
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        url = cluster.redis_url(args, stack)
        for k in range(args.runs):
            rounds.append(cluster_round(args, url))
            print(json.dumps({"run": k + 1, **rounds[-1]}), flush=True)
            markdown = cluster_table(rounds, args)
            path = write_results(args.name or "tapstorm-nodes", run, markdown, rounds)
    print(markdown)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "client", "domain"))
    parser.add_argument("--tappers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=15.0, help="taps per second per tapper")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--quantity", type=int, default=10000, help="units in the flash sale (Q)")
    parser.add_argument("--limit", type=int, default=20, help="per-user limit of the sale")
    parser.add_argument("--duration", type=float, default=8.0, help="storm seconds (and each echo floor's)")
    parser.add_argument("--floor", type=float, default=3.0, help="in-engine floor (unknown action) seconds")
    parser.add_argument("--floors", default=",".join(ECHO_FLOORS),
                        help="echo floors run before the engine in every round (bench/echo_floor.py); '' for none")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds from storm start to sale start")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="longest wait, after a phase, for its last answers before the next phase")
    parser.add_argument("--procs", type=int, default=4, help="client processes (all on core 1)")
    parser.add_argument("--runs", type=int, default=5, help="rounds (each: the echo floors, then the engine)")
    parser.add_argument("--quiet", type=float, default=120.0,
                        help="wait up to this many seconds for core 0 to be idle before each server starts")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `livecart serve` argument, repeatable (e.g. --server-arg=--fanout-slice=2048)")
    parser.add_argument("--server-nice", type=int, default=0,
                        help="nice value of each server's session (e.g. -10 when other work shares core 0)")
    parser.add_argument("--profile", default="", help="py-spy the server during the storm into this file")
    parser.add_argument("--name", default="", help="results go to bench/results/NAME.{md,json}")
    cluster.add_arguments(parser)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tap-subs", default="")
    parser.add_argument("--watch-subs", default="")
    args = parser.parse_args()
    cluster.check(parser, args)
    if args.mode == "client":
        uvloop.run(client_main(args))
        return
    run = record("tapstorm")
    if args.mode == "domain":
        os.sched_setaffinity(0, {1})  # the load side's core, as in the storm
        domain_runs = []
        for _ in range(args.runs):
            domain_runs.append(uvloop.run(domain_main(args.quantity)))
            print(json.dumps({"us_per_tap": domain_runs[-1]}), flush=True)
        markdown = domain_table(domain_runs)
        print(markdown)
        print(write_results(args.name or "tapstorm-domain", run, markdown, domain_runs))
        return
    args.floors = [kind for kind in args.floors.split(",") if kind]
    unknown = set(args.floors) - set(ECHO_FLOORS)
    if unknown:
        parser.error(f"unknown echo floor(s): {', '.join(sorted(unknown))}")
    if args.nodes:
        cluster_main(args, run)
        return
    runs: list[dict[str, Any]] = []
    for k in range(args.runs):
        runs.append(one_round(args))
        print(json.dumps({"run": k + 1, **runs[-1]}), flush=True)
        # written after every round, so the rounds done so far survive an interrupted command
        markdown = storm_table(runs, args.quantity)
        if args.floors:
            markdown += (
                "\n\nEcho floors (bench/echo_floor.py) in the same rounds, each pinned to core 0 under the same "
                "load (same connections, same tap message, same pace), measured over a window as long as the "
                "storm's; `x faster floor` = the engine's µs per tap over the faster floor's µs per message, "
                "per run, and the median of those ratios. Core 0 busy before start: its busy share in the last "
                "second of the wait for a quiet core (`--quiet`) before each server started. Others on core 0: "
                "its busy share in each measured window that was not the server's. Core 1 busy: all load on "
                "the clients' core in each window (at 1.00 the clients may have delayed the answers).\n\n"
                + floors_table(runs, args.floors)
            )
        markdown += "\n\n" + targets(runs, args.quantity)
        path = write_results(args.name or "tapstorm", run, markdown, runs)
    print(markdown)
    print(path)


if __name__ == "__main__":
    main()

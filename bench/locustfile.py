"""A shopper audience for locust, to load-test a livecart deployment from many machines.

    locust -f bench/locustfile.py --host http://NODE:8080 --master --headless -u 200 -r 50 -t 60s \
        --expect-workers 2
    locust -f bench/locustfile.py --worker --master-host MASTER     # on each load machine

Each user is a shopper: it gets a token (minted with the admin key, or a guest token), reads the
catalog over HTTP, joins the room's websocket on one of the deployment's nodes (spread over the
nodes `/healthz` lists) and waits for the snapshot, then watches the room's events while it taps
the live sale now and then and checks out its cart. What locust records, by name:

- `WS join`: connect to snapshot; `WS tap`: tap to its answer (ack or error); `WS checkout`: the
  same for a checkout. An error answer is a failure whose text is its code (`rate_limited`,
  `sold_out`, ...), so locust's failures table is the errors by code.
- `EVENT <type>`: the lag of each room event, the receipt time minus its `ts` (the publish time on
  the server's clock: meaningful across machines only with synchronised clocks).
- `GET products`, `GET sales`: the catalog reads.
- `WS closed <code>`: a connection the server closed (a failure; the shopper joins again).

Settings, from the environment (every worker needs the same):

- `LIVECART_ROOM` (default `locust`): the room.
- `LIVECART_SECRET`: with the servers' token secret, each shopper signs its own viewer token (its
  own `sub`, so per-user limits hold per shopper), as a shop's backend does: no HTTP call.
- `LIVECART_ADMIN_KEY`: else each shopper's viewer token is minted by the admin API; without
  either, shoppers ask the guest endpoint, which is rate-limited per client address
  (`--guest-rate`): fine for a few shoppers per machine only. Both calls wait out a `429`.
- `LIVECART_TOKEN_SOURCE` (`secret`, `admin` or `guest`; by default the first whose setting is
  given): force one source.
- `LIVECART_SALE`: tap this sale; without it the shoppers tap whichever sale of the room is live.
  With the admin key the master (or a single locust) creates the room at test start, and when
  no sale is named or live, a product and a sale (`LIVECART_SALE_QUANTITY`, default 10,000,000
  units, one hour).
- `LIVECART_TAP_EVERY` (default 2 s): the mean pause between a shopper's actions.
- `LIVECART_RESULTS`: at test stop the master writes its summary table there (markdown).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import jwt
import requests
from locust import User, between, events, task
from locust.clients import HttpSession
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ROOM = os.environ.get("LIVECART_ROOM", "locust")
ADMIN_KEY = os.environ.get("LIVECART_ADMIN_KEY", "")
SECRET = os.environ.get("LIVECART_SECRET", "")
TOKEN_SOURCE = os.environ.get("LIVECART_TOKEN_SOURCE", "secret" if SECRET else "admin" if ADMIN_KEY else "guest")
SALE = os.environ.get("LIVECART_SALE", "")
SALE_QUANTITY = int(os.environ.get("LIVECART_SALE_QUANTITY", "10000000"))
TAP_EVERY = float(os.environ.get("LIVECART_TAP_EVERY", "2"))
RESULTS = os.environ.get("LIVECART_RESULTS", "")
ANSWER_TIMEOUT = 10.0  # seconds an action may wait for its answer before it counts as lost
SETUP_PRODUCT = "locust-item"
SETUP_SALE = "locust-sale"

_node_turn = itertools.count()
_nodes: list[tuple[str, str]] = []  # (HTTP, websocket) URL of each node, once per process
_samples: dict[str, list[float]] = {"workers_cpu": [], "nodes_cpu": []}
_worker_cpu: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}  # worker -> first, last report


class ShopError(Exception):
    """An error answer; its text is the answer's code, which is what locust groups failures by."""


def admin_call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    """One admin API call (setup and token minting are not part of the measured load)."""
    return requests.request(method, base + path, json=body, timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def nodes_of(base: str) -> list[tuple[str, str]]:
    """(HTTP, websocket) URLs of every live node, from the registry `/healthz` shows, asked once per
    process (each shopper asking again would be load of its own); the node asked when it runs alone
    (no registry without Redis)."""
    if not _nodes:
        for attempt in range(5):
            try:
                health = requests.get(base + "/healthz", timeout=10).json()
                _nodes.extend(sorted({(n["http_url"], n["ws_url"]) for n in health["node"].get("nodes", [])
                                     if n.get("http_url") and n.get("ws_url")}))
                if not _nodes and health["bus"]["backend"] != "redis":
                    room = requests.get(f"{base}/api/rooms/{ROOM}", timeout=10).json()
                    _nodes.append((base, room["links"]["ws"]))
                if _nodes:
                    break
            except (requests.RequestException, KeyError, ValueError):
                pass
            gevent.sleep(1 + attempt)
    if not _nodes:
        raise RuntimeError(f"no livecart node listed by {base}/healthz")
    return _nodes


def set_up_sale(base: str) -> None:
    """Create the room, then its product and a long sale unless a sale is named or one is already live."""
    if not ADMIN_KEY:
        return
    admin_call(base, "POST", "/api/rooms", {"id": ROOM, "title": "Load test"})  # 409 when it exists
    if SALE:
        return
    sales = requests.get(f"{base}/api/rooms/{ROOM}/sales", timeout=10).json()["sales"]
    if any(s["state"] == "live" for s in sales):
        return
    admin_call(base, "PUT", f"/api/rooms/{ROOM}/products/{SETUP_PRODUCT}",
               {"title": "Load test item", "price": 1000, "currency": "EUR",
                "stock": SALE_QUANTITY}).raise_for_status()
    sale_id = f"{SETUP_SALE}-{int(time.time())}"
    admin_call(base, "POST", f"/api/rooms/{ROOM}/sales",
               {"id": sale_id, "product_id": SETUP_PRODUCT, "price": 500, "quantity": SALE_QUANTITY,
                "per_user_limit": 1000, "duration": 3600}).raise_for_status()


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    """Workers report their own process CPU time to the master, which keeps each one's first and
    last report: a worker's busy share of one core over the run, measured by the kernel."""
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message("cpu", on_cpu_report)


def on_cpu_report(msg: Any, **_: Any) -> None:
    worker, report = msg.node_id, msg.data
    first, _last = _worker_cpu.get(worker, (report, report))
    _worker_cpu[worker] = (first, report)


def report_cpu(environment: Environment) -> None:
    """A worker's (CPU seconds, wall seconds) every 2 s, while it runs shoppers."""
    while environment.runner is not None and environment.runner.state not in ("stopped", "quitting"):
        times = os.times()
        environment.runner.send_message("cpu", (times.user + times.system, time.monotonic()))
        gevent.sleep(2)


@events.test_start.add_listener
def on_test_start(environment: Environment, **_: Any) -> None:
    """The master (or a lone locust) prepares the sale before any shopper is spawned."""
    if isinstance(environment.runner, WorkerRunner):
        gevent.spawn(report_cpu, environment)
        return
    set_up_sale(environment.host or "")
    if isinstance(environment.runner, MasterRunner):
        gevent.spawn(sample_cpu, environment)


def sample_cpu(environment: Environment) -> None:
    """Every 2 s, the workers' CPU (from their heartbeats) and the nodes' (from the registry): which
    side of the test runs out first."""
    runner = environment.runner
    while runner is not None and runner.state not in ("stopped", "quitting"):
        gevent.sleep(2)
        workers = [w.cpu_usage for w in runner.clients.values()]
        if workers:
            _samples["workers_cpu"].append(sum(workers) / len(workers))
        try:
            health = requests.get(environment.host + "/healthz", timeout=2).json()
            _samples["nodes_cpu"].append(sum(n["load"]["cpu"] for n in health["node"]["nodes"]) * 100)
        except (requests.RequestException, KeyError, ValueError):
            pass


class Shopper(User):
    """A viewer of the room: joins, watches, taps during the sale, checks out, reads the catalog."""

    wait_time = between(TAP_EVERY / 2, TAP_EVERY * 1.5)

    def on_start(self) -> None:
        base = self.host or ""
        nodes = nodes_of(base)
        self.http_url, self.ws_url = nodes[next(_node_turn) % len(nodes)]
        self.http = HttpSession(base_url=self.http_url, request_event=self.environment.events.request, user=self)
        self.token = self.get_token()
        self.pending: dict[str, tuple[str, float]] = {}  # request id -> (action, sent at)
        self.ids = itertools.count(1)
        self.sale_id = SALE
        self.held = 0
        self.ws: ClientConnection | None = None
        self.reader: gevent.Greenlet | None = None
        self.browse()
        self.join()

    def on_stop(self) -> None:
        if self.reader is not None:
            self.reader.kill(block=False)
        if self.ws is not None:
            self.ws.close()

    def get_token(self) -> str:
        """A viewer token of its own: minted with the admin key, or a guest token."""
        sub = f"shopper-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        if TOKEN_SOURCE == "secret":
            return jwt.encode({"room": ROOM, "role": "viewer", "sub": sub, "exp": int(time.time()) + 86400},
                              SECRET, algorithm="HS256")
        for _ in range(30):
            if TOKEN_SOURCE == "admin":
                answer = admin_call(self.http_url, "POST", f"/api/rooms/{ROOM}/tokens", {"role": "viewer", "sub": sub})
            else:
                answer = requests.post(f"{self.http_url}/api/rooms/{ROOM}/guest", timeout=10)
            if answer.status_code != 429:
                break
            gevent.sleep(float(answer.headers.get("Retry-After", "1")) * random.uniform(1, 2))
        answer.raise_for_status()
        return answer.json()["token"]

    def join(self) -> None:
        """Connect and wait for the snapshot, then read the room's frames in a greenlet of its own."""
        started = time.perf_counter()
        try:
            # legacy=True: a connection kept open across tasks (closed by on_stop), not a with-block
            self.ws = connect(f"{self.ws_url}?token={self.token}", open_timeout=ANSWER_TIMEOUT, legacy=True)
            snapshot = json.loads(self.ws.recv(timeout=ANSWER_TIMEOUT))
        except (OSError, TimeoutError, ConnectionClosed) as error:
            self.fire("WS", "join", started, exception=error)
            self.ws = None  # the next action joins again
            return
        self.fire("WS", "join", started, exception=None if snapshot.get("type") == "snapshot"
                  else ShopError(snapshot.get("code", snapshot.get("type"))), length=0)
        if not self.sale_id:
            self.sale_id = next((s["id"] for s in snapshot.get("sales", []) if s["state"] == "live"), "")
        self.reader = gevent.spawn(self.read)

    def read(self) -> None:
        """Every frame: an answer settles its pending action, an event records its lag."""
        assert self.ws is not None
        try:
            for frame in self.ws:
                message = json.loads(frame)
                kind = message.get("type")
                if kind in ("ack", "error") and str(message.get("re")) in self.pending:
                    action, sent = self.pending.pop(str(message["re"]))
                    error = ShopError(message["code"]) if kind == "error" else None
                    self.fire("WS", action, sent, exception=error, length=len(frame))
                    if action == "tap" and error is None:
                        self.held += 1
                    elif action == "checkout" and error is None:
                        self.held = 0
                elif "ts" in message and "seq" in message:
                    lag_ms = max(0.0, time.time() * 1000 - message["ts"])
                    self.environment.events.request.fire(
                        request_type="EVENT", name=kind, response_time=lag_ms, response_length=len(frame),
                        exception=None, context={})
                    if kind == "sale.started" and not SALE:
                        self.sale_id = message.get("id", self.sale_id)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
            self.fire("WS", f"closed {code}", time.perf_counter(), exception=ShopError(f"close {code}"))
        self.ws = None

    def fire(self, kind: str, name: str, started: float, exception: Exception | None, length: int = 0) -> None:
        """Report one action to locust, timed from `started` (perf_counter) to now."""
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=exception, context={})

    def send(self, action: str, **body: Any) -> None:
        """Send an action; its answer is timed by the reader. Unanswered ones count as lost."""
        if self.ws is None:
            self.join()
            return
        now = time.perf_counter()
        for request_id, (name, sent) in list(self.pending.items()):
            if now - sent > ANSWER_TIMEOUT:
                del self.pending[request_id]
                self.fire("WS", name, sent, exception=ShopError("no_answer"))
        request_id = f"{os.getpid()}-{next(self.ids)}"
        self.pending[request_id] = (action, now)
        try:
            self.ws.send(json.dumps({"type": action, "id": request_id, **body}))
        except ConnectionClosed:
            self.pending.pop(request_id, None)

    @task(6)
    def tap(self) -> None:
        if self.sale_id:
            self.send("tap", sale_id=self.sale_id)

    @task(1)
    def checkout(self) -> None:
        """Check out what the shopper holds; not again while one is on its way (it would find the
        cart empty, an error of the test's making)."""
        if self.held and all(action != "checkout" for action, _ in self.pending.values()):
            self.send("checkout")

    @task(2)
    def browse(self) -> None:
        """The catalog reads a shop page makes."""
        self.http.get(f"/api/rooms/{ROOM}/products", name="products")
        self.http.get(f"/api/rooms/{ROOM}/sales", name="sales")


def commit() -> str:
    """The checked-out commit of the tree this file is in, for the results' header."""
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def percentile_ms(entry: Any, q: float) -> str:
    return f"{entry.get_response_time_percentile(q):.0f}" if entry.num_requests else "-"


def worker_shares() -> str:
    shares = [100 * (last[0] - first[0]) / (last[1] - first[1])
              for first, last in _worker_cpu.values() if last[1] > first[1]]
    return ", ".join(f"{share:.0f}" for share in sorted(shares)) or "-"


def mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.0f}" if values else "-"


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_: Any) -> None:
    """The master writes the run's table: every request name, then the errors by code."""
    if isinstance(environment.runner, WorkerRunner) or not RESULTS:
        return
    stats = environment.stats
    workers = len(environment.runner.clients) if isinstance(environment.runner, MasterRunner) else 0
    lines = [
        f"Commit `{commit()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{workers} workers, command:",
        "", "    " + " ".join(["locust", *sys.argv[1:]]), "",
        f"Workers' CPU (mean of their heartbeats, % of one core each): mean {mean(_samples['workers_cpu'])}, "
        f"max {max(_samples['workers_cpu'], default=0):.0f}. Nodes' CPU (sum, % of one core, "
        f"from the registry): mean {mean(_samples['nodes_cpu'])}, max {max(_samples['nodes_cpu'], default=0):.0f}. "
        f"Workers' own CPU over the run (kernel accounting, % of one core): {worker_shares()}. "
        f"This machine's load average over the last minute at the end: {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores.",
        "",
        "| type | name | requests | failures | per s | median ms | p95 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in sorted(stats.entries.values(), key=lambda e: (e.method or "", e.name)):
        lines.append(
            f"| {entry.method} | {entry.name} | {entry.num_requests} | {entry.num_failures} | "
            f"{entry.total_rps:.1f} | {percentile_ms(entry, 0.5)} | {percentile_ms(entry, 0.95)} | "
            f"{percentile_ms(entry, 0.99)} | {entry.max_response_time or 0:.0f} |")
    total = stats.total
    lines.append(f"| all | | {total.num_requests} | {total.num_failures} | {total.total_rps:.1f} | "
                 f"{percentile_ms(total, 0.5)} | {percentile_ms(total, 0.95)} | {percentile_ms(total, 0.99)} | "
                 f"{total.max_response_time or 0:.0f} |")
    codes: Counter[tuple[str, str]] = Counter()
    for error in stats.errors.values():
        code = re.sub(r"^\w+\(['\"]?(.*?)['\"]?\)$", r"\1", str(error.error))  # ShopError('sold_out'): sold_out
        codes[(f"{error.method} {error.name}", code)] += error.occurrences
    lines += ["", "| errors of | code | count |", "|---|---|---:|"]
    lines += [f"| {name} | {code} | {count} |" for (name, code), count in sorted(codes.items())] or ["| none | | 0 |"]
    Path(RESULTS).write_text("\n".join(lines) + "\n")

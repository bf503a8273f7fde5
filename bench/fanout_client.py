"""Load side of the fan-out bench: many raw websocket viewers per process, and the loop-lag probe.

Why raw: the clients share one core, and with 10,000 viewers they must absorb tens of
thousands of messages per second without becoming the bottleneck they are meant to
measure. So the viewers are bare ``asyncio.Protocol`` objects on uvloop that do the
RFC 6455 handshake by hand, parse the server's unmasked frames with a few byte reads,
and ``orjson.loads`` each message only to read its ``seq`` and the publisher's send time.

``viewers``: open ``--count`` connections, print ``{"ready": ...}``, then answer commands
on stdin, one per line: ``count`` (measured events received so far), ``report K``
(per-process statistics given K measured events; latencies go to ``--lat-file``).

``probe``: one more connection that sends a websocket ping every ``--interval`` seconds
(one outstanding at a time) and times the pong, which the server writes from its event
loop as soon as it reads the ping: the round trip is the time the loop was busy elsewhere.
Commands: ``start`` (begin recording), ``stop`` (print statistics).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import struct
import sys
import time
from array import array
from typing import Any

import orjson
import uvloop
from measure import main_thread_on_cpu_ns, summary

from signaling.tokens import mint

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1
ZERO_MASK = b"\x00\x00\x00\x00"  # a legal mask key that leaves the payload as it is


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask; an all-zero key costs nothing to apply)."""
    n = len(payload)
    head = struct.pack("!BB", 128 | opcode, 128 | n) if n < 126 else struct.pack("!BBH", 128 | opcode, 128 | 126, n)
    return head + ZERO_MASK + payload


def upgrade_request(port: int, query: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class RawSocket(asyncio.Protocol):
    """Handshake and frame parsing; subclasses handle text messages and pongs."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.handshaken = False
        self.buf = b""
        self.closed = False
        self.close_code: int | None = None  # the code of the server's close frame, if it sent one
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data if self.buf else data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(buf[:end].decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.handshaken = True
            self.ready.set_result(None)
            buf = buf[end + 4 :]
        i, n = 0, len(buf)
        while n - i >= 2:
            size = buf[i + 1] & 0x7F
            head = 2
            if size == 126:
                if n - i < 4:
                    break
                size = (buf[i + 2] << 8) | buf[i + 3]
                head = 4
            elif size == 127:
                if n - i < 10:
                    break
                size = int.from_bytes(buf[i + 2 : i + 10], "big")
                head = 10
            end = i + head + size
            if end > n:
                break
            opcode = buf[i] & 0x0F
            payload = buf[i + head : end]
            i = end
            if opcode == TEXT:
                self.on_text(payload, now)
            elif opcode == PING:
                assert self.transport is not None
                self.transport.write(masked(PONG, payload))
            elif opcode == PONG:
                self.on_pong(payload)
            elif opcode == CLOSE:
                self.closed = True
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self.buf = buf[i:]

    def on_text(self, payload: bytes, now: float) -> None:
        """A text message arrived at ``now`` (wall clock, comparable with the publisher's)."""

    def on_pong(self, payload: bytes) -> None:
        """The server answered one of our pings."""


class Viewer(RawSocket):
    """Counts the bench's chat events, seq gaps and publish-to-receive latency."""

    def __init__(self, request: bytes, lat: array, warmup: int) -> None:
        super().__init__(request)
        self.lat = lat
        self.warmup = warmup
        self.last_seq: int | None = None
        self.got = 0
        self.gaps = 0
        self.errors = 0
        self.size = 0

    def on_text(self, payload: bytes, now: float) -> None:
        msg = orjson.loads(payload)
        kind = msg.get("type")
        seq = msg.get("seq")
        if kind == "snapshot":
            self.last_seq = seq
            return
        if kind == "error":
            self.errors += 1
            return
        if seq is None or kind == "ack":
            return
        last = self.last_seq
        if last is not None and seq != last + 1 and seq > last:
            self.gaps += seq - last - 1
        self.last_seq = seq
        if kind == "chat":
            k, sent, _ = msg["text"].split(" ", 2)
            if int(k) >= self.warmup:
                self.got += 1
                self.lat.append((now - float(sent)) * 1000.0)
                self.size = len(payload)


async def _connect(factory, port: int, src: str | None):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    local = (src, 0) if src else None
    _, proto = await loop.create_connection(factory, "127.0.0.1", port, local_addr=local)
    await asyncio.wait_for(proto.ready, 30)
    return proto


def _query(args: argparse.Namespace, sub: str) -> str:
    if not args.secret:
        return "viewer=1"
    return "token=" + mint(args.secret, args.room, "viewer", sub, 3600)


async def run_viewers(args: argparse.Namespace) -> None:
    lat = array("f")
    viewers: list[Viewer] = []
    gate = asyncio.Semaphore(args.concurrency)
    failed: list[str] = []

    async def open_one(i: int) -> None:
        request = upgrade_request(args.port, _query(args, f"bench-{args.worker}-{i}"))
        async with gate:
            for attempt in range(5):
                try:
                    viewers.append(await _connect(lambda: Viewer(request, lat, args.warmup), args.port, args.src))
                    return
                except (TimeoutError, OSError, ConnectionError) as exc:
                    if attempt == 4:
                        failed.append(str(exc))
                    await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(open_one(i) for i in range(args.count)))
    _say({"ready": len(viewers), "failed": len(failed), "why": failed[:3]})
    reader = await _stdin_reader()
    while line := (await reader.readline()).decode().split():
        if line[0] == "count":
            _say({"got": sum(v.got for v in viewers)})
        elif line[0] == "report":
            expected = int(line[1])
            with open(args.lat_file, "wb") as f:
                lat.tofile(f)
            _say({
                "viewers": len(viewers),
                "got": sum(v.got for v in viewers),
                "missing": sum(max(0, expected - v.got) for v in viewers),
                "clients_missing": sum(1 for v in viewers if v.got < expected),
                "seq_gaps": sum(v.gaps for v in viewers),
                "errors": sum(v.errors for v in viewers),
                "closed": sum(1 for v in viewers if v.closed),
                "size": max((v.size for v in viewers), default=0),
            })
            return


class Probe(RawSocket):
    """Pings the server every ``interval`` seconds, one ping in flight at a time.

    Each round trip is timed twice: on the wall clock (what a client sees, including any
    time the server was preempted by other processes on its core) and as the server
    loop's own CPU time in between (``busy``: the work it did before it could answer,
    which is what a long broadcast shows up as, and which other tenants cannot inflate).
    """

    def __init__(self, request: bytes, interval: float, pid: int) -> None:
        super().__init__(request)
        self.interval = interval
        self.pid = pid
        self.sent_at = 0.0
        self.sent_cpu = 0
        self.recording = False
        self.rtts = array("d")
        self.busy = array("d")
        self.stalls: list[tuple[float, float, float]] = []  # (wall time, rtt ms, busy ms) of pings busy > 20 ms
        self.counter = 0

    def ping(self) -> None:
        if self.closed or self.transport is None:
            return
        self.counter += 1
        self.sent_cpu = main_thread_on_cpu_ns(self.pid) if self.pid else 0
        self.sent_at = time.perf_counter()
        self.transport.write(masked(PING, self.counter.to_bytes(8, "big")))

    def on_pong(self, payload: bytes) -> None:
        if int.from_bytes(payload, "big") != self.counter:
            return  # the server's answer to an unsolicited pong or an older ping
        if self.recording:
            self.rtts.append((time.perf_counter() - self.sent_at) * 1000.0)
            if self.pid:
                busy = (main_thread_on_cpu_ns(self.pid) - self.sent_cpu) / 1e6
                self.busy.append(busy)
                if busy > 20.0 and len(self.stalls) < 50:
                    self.stalls.append((round(time.time(), 3), round(self.rtts[-1], 1), round(busy, 1)))
        asyncio.get_running_loop().call_later(self.interval, self.ping)


async def run_probe(args: argparse.Namespace) -> None:
    request = upgrade_request(args.port, _query(args, "bench-probe"))
    probe: Probe = await _connect(lambda: Probe(request, args.interval, args.pid), args.port, args.src)
    probe.ping()
    _say({"ready": 1})
    reader = await _stdin_reader()
    started = 0.0
    while line := (await reader.readline()).decode().split():
        if line[0] == "start":
            probe.recording = True
            started = time.perf_counter()
        elif line[0] == "stop":
            probe.recording = False
            _say({
                "pings": len(probe.rtts),
                "seconds": round(time.perf_counter() - started, 2),
                "rtt": summary(probe.rtts, over=20),
                "busy": summary(probe.busy, over=20),
                "stalls": probe.stalls,
                "closed": probe.closed,
            })
            return


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["viewers", "probe"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default="", help="engine token secret (empty: the floor server, no auth)")
    parser.add_argument("--room", default="demo")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--src", default=None, help="source address (127.0.0.x) for the connections")
    parser.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    parser.add_argument("--warmup", type=int, default=0, help="events with index below this are not measured")
    parser.add_argument("--lat-file", default="/dev/null")
    parser.add_argument("--interval", type=float, default=0.005, help="probe: seconds between pings")
    parser.add_argument("--pid", type=int, default=0, help="probe: the server's pid, to read its loop's CPU time")
    args = parser.parse_args()
    uvloop.run(run_viewers(args) if args.mode == "viewers" else run_probe(args))


if __name__ == "__main__":
    main()

"""Cheap LL-HLS players for the HLS bench: one process runs many over raw HTTP/1.1 keep-alive.

A player does what hls.js does at the live edge, without decoding: one plain playlist request,
then a loop of blocking reloads (``_HLS_msn``/``_HLS_part`` of the part after the last listed, with
``_HLS_skip=YES`` delta updates) and a request for every part the reload lists that it has not
fetched yet. It keeps one connection; HTTP is written and read by hand (no client library), so one
core of players can load a server on another. Each player binds its own loopback source address
(127.1.x.y), as an audience comes from many addresses (the engine bounds HTTP connections per
address).

In ``static`` mode (the bench's baseline) a player instead asks, once per part duration, for the
plain playlist and for the last part it lists (already made, so nothing waits): the same requests
and bytes at the same pace, without blocking reloads.

    python bench/hls_client.py --base http://127.0.0.1:8080 --room bench --first 0 --count 250 \\
        --out out.json

It prints ``ready``, then reads one JSON line from stdin, ``{"start_at": T, "ramp": R, "stop_at":
T2, "static": true, "part_seconds": S}`` (monotonic times; ``static`` for the baseline): player ``i``
starts at ``T + R * i / count``; at ``T2`` the process writes, per part it fetched, ``[name,
arrival]`` (monotonic, shared by every process on the machine) and its request and error counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop


@dataclass
class Tally:
    """What one process's players did."""

    requests: int = 0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    parts: list[tuple[str, float]] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, requests one after another. A body is kept only when
    asked for (playlists); a part's bytes are counted as they arrive and dropped, so a player costs
    little more than the kernel's copy."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._body: bytearray | None = None
        self._keep = False
        self._status = 0
        self._left = -1  # body bytes still to come; -1 while reading the head
        self._size = 0
        self._done: asyncio.Future[None] | None = None

    async def get(self, path: str, keep: bool = True) -> tuple[int, bytes]:
        """(status, body); with ``keep`` False the body is b"" and only its length is counted (``size``)."""
        loop = asyncio.get_running_loop()
        if self.transport is None or self.transport.is_closing():
            await loop.create_connection(lambda: self, self.host, self.port, local_addr=(self.source, 0))
        assert self.transport is not None
        self._head, self._body, self._keep, self._left, self._size = bytearray(), bytearray(), keep, -1, 0
        self._done = loop.create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await self._done
        return self._status, bytes(self._body) if keep else b""

    @property
    def size(self) -> int:
        """The last body's length."""
        return self._size

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._left < 0:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self._head[:end]), bytes(self._head[end + 4:])
            self._status = int(head[9:12])
            self._left = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    self._left = self._size = int(line[15:])
        if self._keep:
            self._body += data
        self._left -= len(data)
        if self._left <= 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionResetError("the server closed the connection"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def listed(text: str) -> tuple[int, int, list[str]]:
    """(_HLS_msn, _HLS_part) of the part after the last listed, and the parts' names, in order."""
    msn, part, parts = 0, 0, []
    for line in text.split("\n"):
        if line.startswith("#EXT-X-PART:"):
            parts.append(line.split('URI="', 1)[1].split('"', 1)[0])
            part += 1
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line[22:])
        elif line.startswith("#EXT-X-SKIP:"):
            msn += int(line.rsplit("=", 1)[1])
        elif line and not line.startswith("#"):
            msn, part = msn + 1, 0
    return msn, part, parts


async def player(connection: Connection, room: str, tally: Tally, stop_at: float,
                 keep: dict[str, bytes] | None = None) -> None:
    """Follow the room's live edge until ``stop_at``; ``keep`` receives every part's bytes."""
    playlist = f"/hls/{room}/index.m3u8"
    seen: set[str] = set()
    status, body = await connection.get(playlist)
    tally.requests += 1
    if status != 200:
        tally.error(f"playlist {status}")
        await asyncio.sleep(1.0)
        return
    msn, part, parts = listed(body.decode())
    seen.update(parts[:-1])  # start at the live edge: the last listed part, then every new one
    while time.monotonic() < stop_at:
        for name in parts:
            if name in seen:
                continue
            seen.add(name)
            status, data = await connection.get(f"/hls/{room}/{name}", keep=keep is not None)
            tally.requests += 1
            tally.bytes += connection.size
            if status != 200:
                tally.error(f"part {status}")
                continue
            tally.parts.append((name, time.monotonic()))
            if keep is not None:
                keep[name] = data
        if len(seen) > 400:
            seen = set(parts)
        status, body = await connection.get(f"{playlist}?_HLS_msn={msn}&_HLS_part={part}&_HLS_skip=YES")
        tally.requests += 1
        if status != 200:
            tally.error(f"reload {status}")
            await asyncio.sleep(0.5)
            status, body = await connection.get(playlist)
            tally.requests += 1
            if status != 200:
                return
        msn, part, parts = listed(body.decode())


async def static(connection: Connection, room: str, every: float, tally: Tally, stop_at: float) -> None:
    """The baseline: the plain playlist and the last part it lists, once per part duration."""
    next_at = time.monotonic()
    while next_at < stop_at:
        status, body = await connection.get(f"/hls/{room}/index.m3u8")
        tally.requests += 1
        tally.bytes += connection.size
        parts = listed(body.decode())[2] if status == 200 else []
        if parts:
            status, _ = await connection.get(f"/hls/{room}/{parts[-1]}", keep=False)
            tally.requests += 1
            tally.bytes += connection.size
        if status != 200 or not parts:
            tally.error(f"static {status}")
        next_at += every
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def again(play: Callable[[], Awaitable[None]], connection: Connection, tally: Tally, stop_at: float) -> None:
    """Run ``play`` until ``stop_at``, starting it again (on a new connection) after an error."""
    try:
        while time.monotonic() < stop_at:
            try:
                await play()
            except (OSError, ValueError) as exc:
                tally.error(type(exc).__name__)
                connection.close()
                await asyncio.sleep(0.5)
    finally:
        connection.close()


def source(index: int) -> str:
    """A loopback source address of its own for player ``index``."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


async def run(args: argparse.Namespace, plan: dict[str, Any]) -> Tally:
    host, port = args.base.removeprefix("http://").rsplit(":", 1)
    tally = Tally()

    async def one(index: int) -> None:
        await asyncio.sleep(max(0.0, plan["start_at"] + plan["ramp"] * index / args.count - time.monotonic()))
        connection = Connection(host, int(port), source(args.first + index))
        if plan.get("static"):
            await again(lambda: static(connection, args.room, plan["part_seconds"], tally, plan["stop_at"]),
                        connection, tally, plan["stop_at"])
        else:
            await again(lambda: player(connection, args.room, tally, plan["stop_at"]), connection, tally,
                        plan["stop_at"])

    tasks = [asyncio.ensure_future(one(i)) for i in range(args.count)]
    await asyncio.sleep(max(0.0, plan["stop_at"] - time.monotonic()))
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--first", type=int, default=0, help="global index of this process's first player")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print("ready", flush=True)
    plan = json.loads(sys.stdin.readline())
    tally = uvloop.run(run(args, plan))
    with open(args.out, "w") as out:
        json.dump({"requests": tally.requests, "bytes": tally.bytes, "errors": tally.errors,
                   "parts": tally.parts}, out)


if __name__ == "__main__":
    main()

"""A Redis of a bench's own, and what a bench reads from any Redis: its commands and its CPU time.

Why one module: the stock bench and the engine benches in cluster mode (fan-out and tap storm with
``--nodes``) all count Redis round trips from ``INFO commandstats`` and Redis CPU from ``INFO cpu``
before and after a window, so "commands per tap" and "Redis CPU per event" mean the same in each.

A bench's own redis-server (``own_redis``) runs without persistence (``--save '' --appendonly no``)
on a free loopback port, optionally pinned to one core: then the machine's Redis is not disturbed,
nothing but the bench's nodes talk to it (so its counters are the bench's alone) and its CPU can be
read in isolation.

Definitions:

- commands: ``calls`` per command in ``INFO commandstats``. Redis counts a command a Lua script runs
  (``redis.call``) under its own name too, so a tap's ``EVALSHA`` (one round trip) shows up as one
  ``evalsha`` plus every command inside the script.
- Redis CPU: ``used_cpu_sys + used_cpu_user`` of ``INFO cpu`` (seconds, all of the server's threads).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from measure import free_port, prioritise


@contextlib.contextmanager
def own_redis(core: int | None = None, nice: int = 0) -> Iterator[str]:
    """A redis-server for this bench alone (no persistence) on a free loopback port, pinned to
    ``core`` when given, at the nice value ``nice`` (in a session of its own, like the benches'
    servers: Redis is part of the server side, so on a core it shares with the load it is served
    first, as the nodes are); yields its URL once it answers, and kills it at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server), or pass --redis-url")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="livecart-bench-redis-")
    pin = [] if core is None else ["taskset", "-c", str(core)]
    process = subprocess.Popen([*pin, binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                                "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
                               start_new_session=True)
    prioritise(process.pid, nice)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(url)
        yield url
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def wait_for(url: str, timeout: float = 10.0) -> None:
    """Block until the Redis at ``url`` answers PING (at most ``timeout`` seconds)."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except (OSError, redis.ConnectionError):
                if time.monotonic() > deadline:
                    raise SystemExit(f"no Redis answers at {url}") from None
                time.sleep(0.01)
    finally:
        client.close()


@dataclass
class RedisUsage:
    """What Redis did over one window: calls per command (INFO and zero counts left out), CPU seconds."""

    commands: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0

    def calls(self, *names: str) -> int:
        return sum(self.commands.get(name, 0) for name in names)

    @property
    def total(self) -> int:
        """Every command counted, those run inside scripts included."""
        return sum(self.commands.values())


class RedisMeter:
    """Reads ``INFO commandstats`` and ``INFO cpu`` at a window's start and stop (blocking, ~1 ms each)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self._start: tuple[dict[str, tuple[int, int]], float] | None = None

    def _read(self) -> tuple[dict[str, tuple[int, int]], float]:
        stats = self.client.info("commandstats")
        cpu = self.client.info("cpu")
        commands = {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}
        return commands, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> RedisUsage:
        """The usage since ``start`` (the meter's own INFO calls are left out)."""
        assert self._start is not None, "RedisMeter.stop before start"
        (before, cpu0), (after, cpu1) = self._start, self._read()
        calls, usec = {}, {}
        for name, (n, us) in sorted(after.items()):
            n0, us0 = before.get(name, (0, 0))
            if n > n0 and name != "info":
                calls[name], usec[name] = n - n0, us - us0
        return RedisUsage(calls, usec, cpu1 - cpu0)

    def close(self) -> None:
        self.client.close()

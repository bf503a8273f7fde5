"""The garbage collector policy: closed connections need no cycle collector, frozen or not.

The freeze policy (engine.gcpolicy) is only safe because a closed websocket connection is freed
by reference counting: a frozen cycle would never be collected. These tests open and close
thousands of real websocket connections (from a client process of their own, so that the
clients' objects do not mix with the server's) with the policy on and check that the tracked
objects and the memory come back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvloop

from engine.app import App
from engine.config import Config
from engine.gcpolicy import GcPolicy
from tests.conftest import token

N = 2000


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    """uvloop, as under ``livecart serve``: the stdlib loop's socket transports hold cycles of their own."""
    return uvloop.EventLoopPolicy()

CLIENTS = r"""
import asyncio, resource, sys
import websockets

async def main(url):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    conns = []
    while True:
        command = (await reader.readline()).decode().split()
        if not command or command[0] == "quit":
            break
        if command[0] == "open":
            limit = asyncio.Semaphore(64)
            async def one():
                async with limit:
                    # No handshake deadline: on a loaded machine 2,000 handshakes take longer than 10 s.
                    ws = await websockets.connect(url, compression=None, max_queue=None, open_timeout=None)
                    await ws.recv()  # the snapshot: the server has the session
                    return ws
            conns += await asyncio.gather(*[one() for _ in range(int(command[1]))])
        elif command[0] == "close":  # close handshake
            await asyncio.gather(*[ws.close() for ws in conns])
            conns = []
        elif command[0] == "drop":  # the network goes away: no close frame
            for ws in conns:
                ws.transport.abort()
            conns = []
        print("done", flush=True)

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
asyncio.run(main(sys.argv[1]))
"""


class Viewers:
    """A client process holding real websocket viewers, driven one command at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def do(self, command: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        assert line == b"done\n", f"client process failed: {line!r}"


@pytest.fixture
def config(config: Config) -> Config:
    """A short event history: the viewer-count events of thousands of joins are kept state, not leaks.

    The room keeps its last ``history_size`` events for resumes; the slower the machine, the more
    ticks the joins and leaves spread over, and the more of those events (and objects) it keeps.
    The N viewers share one token and one address: the per-user and per-address caps are lifted.
    """
    return config.replace(history_size=16, max_connections_per_user=N, max_ws_per_ip=N)


@pytest.fixture
async def viewers(engine: App) -> AsyncIterator[Viewers]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2 * N + 500:
        pytest.skip(f"needs {2 * N + 500} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = f"ws://127.0.0.1:{engine.ws_port}/ws?token={token(engine)}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS, url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        yield Viewers(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def tracked() -> int:
    """Every object the collector tracks, frozen ones included (gc.get_objects() skips those)."""
    return len(gc.get_objects()) + gc.get_freeze_count()


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


async def all_gone(engine: App) -> None:
    for _ in range(500):
        if not engine.channel.sessions and not engine.channel.hubs:
            break
        await asyncio.sleep(0.02)
    assert not engine.channel.sessions
    await asyncio.sleep(0.2)  # the transports' last callbacks


async def test_closed_connections_come_back_with_the_freeze_policy_on(engine: App, viewers: Viewers) -> None:
    # Never thaw: only reference counting may free them. No pause warnings either: on a loaded
    # machine young collections pass 20 ms, and the log records pytest keeps would be counted.
    policy = GcPolicy("freeze", thaw_below=-1, warn_ms=float("inf"))
    policy.start(lambda: len(engine.channel.sessions))
    try:
        await viewers.do("open 100")
        await viewers.do("close")
        await all_gone(engine)
        base_tracked, base_frozen = tracked(), gc.get_freeze_count()
        rss_after: list[int] = []
        for ending in ("close", "drop", "close"):
            await viewers.do(f"open {N}")
            assert len(engine.channel.sessions) == N
            # The connections are tracked objects, and the policy froze most of them.
            assert tracked() - base_tracked > 20 * N
            assert gc.get_freeze_count() - base_frozen > 10 * N
            await viewers.do(ending)
            await all_gone(engine)
            # Young garbage of the test's own (futures, frames) is not what is measured: drop it.
            # A leaked connection would be frozen by now, and frozen objects survive this. On a
            # loaded machine the last close handshakes and transport callbacks may still be
            # running: give them up to 5 s (a leak stays whatever the wait).
            for _ in range(50):
                gc.collect(0)
                left = tracked() - base_tracked
                if left < N // 2:
                    break
                await asyncio.sleep(0.1)
            assert left < N // 2, f"{left} tracked objects left after {N} connections ended by {ending}"
            assert gc.get_freeze_count() - base_frozen < N // 2
            rss_after.append(rss_bytes())
        # Memory is reused from one wave to the next instead of piling up.
        assert rss_after[2] - rss_after[0] < 8 << 20, rss_after
    finally:
        policy.stop()


async def test_a_frozen_cycle_waits_for_the_thaw_when_idle(engine: App) -> None:
    class Node:
        other: Node

    connections = [5]
    policy = GcPolicy("freeze", thaw_below=0)
    policy.start(lambda: connections[0])
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        gc.collect(1)  # a middle-generation collection: the policy freezes the survivors
        del a, b
        gc.collect()
        assert alive() is not None  # frozen: even a full collection does not see the cycle
        assert not policy.check_idle()  # 5 connections open: not idle
        assert alive() is not None
        connections[0] = 0
        assert policy.check_idle()
        assert alive() is None
    finally:
        policy.stop()


async def full_collections_on_the_metrics_page(engine: App) -> float:
    """``livecart_gc_pause_seconds_count{generation="2"}`` as /metrics shows it."""
    url = f"http://127.0.0.1:{engine.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        page = await response.text()
    full = 'livecart_gc_pause_seconds_count{generation="2"} '
    counts = [line for line in page.splitlines() if line.startswith(full)]
    return float(counts[0].split()[-1]) if counts else 0.0


async def test_collections_are_measured_on_the_metrics_page(engine: App) -> None:
    # The histogram is process-wide and earlier tests may have filled it: only its change counts.
    before = await full_collections_on_the_metrics_page(engine)
    policy = GcPolicy("default")
    policy.start(lambda: len(engine.channel.sessions))
    try:
        thresholds = gc.get_threshold()
        gc.collect()
        gc.collect()
        assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0  # default: CPython's own
        measured = await full_collections_on_the_metrics_page(engine)
        assert measured - before >= 2  # the two full collections above, and any CPython ran meanwhile
    finally:
        policy.stop()
    # Once the policy is removed, collections are no longer measured.
    stopped = await full_collections_on_the_metrics_page(engine)
    gc.collect()
    assert await full_collections_on_the_metrics_page(engine) == stopped


def gc_records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.gcpolicy" and r.levelno == level and text in r.getMessage()]


async def test_the_policys_own_full_collections_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.gcpolicy")
    policy = GcPolicy("freeze", thaw_below=0, warn_ms=0)  # every collection takes long enough to warn about
    policy.start(lambda: 0)
    try:
        # Start-up: the policy's own full collection is expected, not a stall.
        assert gc_records(caplog, logging.DEBUG, "full collection")
        assert not gc_records(caplog, logging.WARNING, "generation 2")
        caplog.clear()
        gc.collect()  # anyone else's full collection is warned about
        assert gc_records(caplog, logging.WARNING, "generation 2")
        caplog.clear()
        assert policy.check_idle()  # the thaw of an idle node: its own again
        assert gc_records(caplog, logging.DEBUG, "full collection")
        assert not gc_records(caplog, logging.WARNING, "generation 2")
    finally:
        policy.stop()


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="freeze, default"):
        GcPolicy("off")

"""Automatic pipelining (engine.redisbatch) through a real Redis: calls made together go out
together, each caller gets its own answer, and Redis faults fail the callers, never hang them.

Round trips are counted on the server: ``total_reads_processed`` (INFO stats) counts the read
events Redis served, one per call without pipelining, one per pipeline (a few when one spans
several socket reads) with it. Counting tests use a Redis of their own so no other client adds reads.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import AuthenticationError, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.bus.redis import RedisBus
from engine.redisbatch import REDIS_POSTS_LOST, RedisBatcher
from engine.storage import StorageUnavailable
from overlays.stock.base import ReserveResult
from overlays.stock.redis import RedisStockStore
from tests.conftest import RedisTarget
from tests.engine.test_bus import listening, until
from tests.engine.test_redis_tls import PASSWORD, tls_redis  # noqa: F401 (a fixture used below)
from tests.redis_server import RedisServer
from tests.tls_certs import make_tls_files

CALLS = 200

# Counts its runs (so a command run twice shows) and answers its argument.
_COUNTING = "redis.call('INCR', KEYS[1]) return ARGV[1]"
_OTHER = "redis.call('INCR', KEYS[1]) return 'other ' .. ARGV[1]"


@pytest.fixture
async def client(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def reads(client: aioredis.Redis) -> int:
    return int((await client.info("stats"))["total_reads_processed"])


async def evalsha_calls(client: aioredis.Redis) -> int:
    return int((await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_calls_go_out_in_few_round_trips_and_each_caller_gets_its_own_reply(
        client: aioredis.Redis) -> None:
    batcher = RedisBatcher(client.connection_pool, name="test", timeout=5.0)
    script = client.register_script(_COUNTING)
    await batcher.evalsha(script, ["n"], [0])  # loaded, and the connection made
    before = await reads(client)
    replies = await asyncio.gather(*(batcher.evalsha(script, ["n"], [i]) for i in range(CALLS)))
    served = await reads(client) - before - 1  # the INFO call just made is one read
    assert replies == [str(i).encode() for i in range(CALLS)]
    assert int(await client.get("n")) == CALLS + 1  # each ran once
    assert served < CALLS // 10  # two pipelines of 100 (each maybe a few socket reads), not 200 calls


async def test_one_commands_error_fails_that_caller_only(client: aioredis.Redis) -> None:
    batcher = RedisBatcher(client.connection_pool, name="test", timeout=5.0)
    await client.hset("h", "f", "v")
    calls = [batcher.call("INCR", f"k{i}") for i in range(50)]
    calls.insert(25, batcher.call("INCR", "h"))  # WRONGTYPE: a hash
    replies: list[Any] = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(replies[25], ResponseError) and "WRONGTYPE" in str(replies[25])
    assert replies[:25] + replies[26:] == [1] * 50


async def test_noscript_reloads_and_runs_again_only_the_commands_redis_did_not_know(client: aioredis.Redis) -> None:
    batcher = RedisBatcher(client.connection_pool, name="test", timeout=5.0)
    known, unknown = client.register_script(_COUNTING), client.register_script(_OTHER)
    await batcher.evalsha(known, ["a"], [0])
    await batcher.evalsha(unknown, ["b"], [0])
    await client.script_flush()  # as after a Redis restart
    await client.script_load(_COUNTING)  # one of the two is back
    before = await evalsha_calls(client)
    replies = await asyncio.gather(*(batcher.evalsha(script, [key], [i])
                                     for i in range(10) for script, key in ((known, "a"), (unknown, "b"))))
    assert replies == [reply for i in range(10) for reply in (str(i).encode(), f"other {i}".encode())]
    assert await evalsha_calls(client) - before == 30  # 20, and again the 10 that met NOSCRIPT
    assert int(await client.get("a")) == int(await client.get("b")) == 11  # none ran twice


async def test_callers_meeting_noscript_together_share_one_load(client: aioredis.Redis) -> None:
    """A Redis that restarted mid-show answers NOSCRIPT to every tap in flight: one SCRIPT LOAD
    serves them all, and a caller that gives up does not cancel it for the others."""
    batcher = RedisBatcher(client.connection_pool, name="test", timeout=5.0)
    script = client.register_script(_COUNTING)
    await batcher.evalsha(script, ["a"], [0])
    await client.script_flush()
    await client.config_resetstat()
    calls = [asyncio.ensure_future(batcher.evalsha(script, ["a"], [i])) for i in range(CALLS)]
    async with asyncio.timeout(10):
        while not batcher._loading:  # every call met NOSCRIPT; the first waits for the load
            await asyncio.sleep(0)
    calls[0].cancel()
    replies = await asyncio.gather(*calls[1:])
    assert replies == [str(i).encode() for i in range(1, CALLS)]
    stats = await client.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 1


async def test_the_stock_store_loads_its_scripts_at_start(own_redis: RedisServer) -> None:
    """Scripts are in Redis before the first tap, so even the show's first taps are one call each."""
    store = RedisStockStore.from_url(own_redis.url, prefix="start:")
    try:
        admin = aioredis.from_url(own_redis.url)
        await admin.script_flush()
        await store.ping()
        await admin.config_resetstat()
        await store.define("room", "p", 5)
        results = await asyncio.gather(*(store.reserve("room", "p", f"u{i}", "t", 1, None, 9e9, 100)
                                         for i in range(CALLS)))
        assert sum(result.ok for result in results) == 5
        stats = await admin.info("commandstats")
        assert "cmdstat_script|load" not in stats and stats["cmdstat_evalsha"]["calls"] == CALLS + 1
        await admin.aclose()
    finally:
        await store.close()


async def test_the_stock_store_and_the_bus_pipeline_calls_made_together(own_redis: RedisServer,
                                                                        client: aioredis.Redis) -> None:
    store = RedisStockStore.from_url(own_redis.url, timeout=5.0)
    bus = RedisBus(own_redis.url, "livecart-test:")
    await bus.start()
    try:
        await store.define("room", "p", 1000)

        def taps(request: str) -> list[Awaitable[ReserveResult]]:
            return [store.reserve("room", "p", f"u{i}", request, 1, None, time.time() + 60, 100) for i in range(CALLS)]

        # Warm: scripts loaded, connections made (a new connection's handshake is reads of its own).
        await asyncio.gather(*taps("warm"), *(bus.publish("room", "warm", {}) for _ in range(CALLS)))
        before = await reads(client)
        tapped = await asyncio.gather(*taps("t"))
        served = await reads(client) - before - 1
        assert all(tap.reservation is not None for tap in tapped)
        assert served < CALLS // 10
        before = await reads(client)
        events = await asyncio.gather(*(bus.publish("room", "chat", {"n": n}) for n in range(CALLS)))
        served = await reads(client) - before - 1
        assert sorted(event.seq for event in events) == list(range(events[0].seq, events[0].seq + CALLS))
        assert served < CALLS // 10
    finally:
        await store.close()
        await bus.stop()


@pytest.mark.parametrize("fault", ["paused", "stopped"])
async def test_redis_away_answers_every_waiting_caller_unavailable(own_redis: RedisServer, fault: str) -> None:
    timeout = 0.3
    store = RedisStockStore.from_url(own_redis.url, timeout=timeout, max_connections=4)
    try:
        await store.define("room", "p", 10)
        if fault == "paused":
            own_redis.pause()  # connections stay open, nothing is answered
        else:
            own_redis.stop()
        started = time.monotonic()
        answers = await asyncio.gather(*(store.counters("room", "p") for _ in range(CALLS)), return_exceptions=True)
        waited = time.monotonic() - started
        assert all(isinstance(answer, StorageUnavailable) and answer.code == "unavailable" for answer in answers)
        assert waited < 2 * timeout + 2.0  # bounded: no caller hangs on a Redis that does not answer
    finally:
        if fault == "paused":
            own_redis.resume()
        await store.close()


async def test_direct_messages_for_other_nodes_lost_in_an_outage_are_counted_and_logged_once(
        own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    sender = RedisBus(own_redis.url, "livecart-test:", timeout=0.3, max_backoff=0.2)
    receiver = RedisBus(own_redis.url, "livecart-test:", timeout=0.3, max_backoff=0.2)
    await sender.start()
    await receiver.start()
    try:
        here, there = await listening(sender, "room"), await listening(receiver, "room")
        await sender.send_direct("room", "alice", "cart.added", {"n": 0})
        await until(lambda: len(there.direct) == 1)
        lost = REDIS_POSTS_LOST.labels("bus")._value.get()
        own_redis.stop()
        with caplog.at_level(logging.WARNING, logger="engine.redisbatch"):
            for n in range(1, 4):
                await sender.send_direct("room", "alice", "cart.added", {"n": n})  # returns at once
            await until(lambda: REDIS_POSTS_LOST.labels("bus")._value.get() == lost + 3)
            own_redis.start()
            await until(lambda: sender.health()["connected"] and receiver.health()["connected"])
            await sender.send_direct("room", "alice", "cart.added", {"n": 4})
            await until(lambda: len(there.direct) == 2)
        assert [message["n"] for _, message in here.direct] == [0, 1, 2, 3, 4]  # this node's, at once
        assert [message["n"] for _, message in there.direct] == [0, 4]
        warnings = [r.getMessage() for r in caplog.records if r.name == "engine.redisbatch"]
        assert len(warnings) == 2 and "lost" in warnings[0] and "again" in warnings[1]  # once per outage
    finally:
        await sender.stop()
        await receiver.stop()


async def test_the_bound_on_waiting_messages_drops_the_excess(redis_target: RedisTarget) -> None:
    bus = RedisBus(redis_target.url, redis_target.prefix, direct_queue=5)
    other = RedisBus(redis_target.url, redis_target.prefix)
    await bus.start()
    await other.start()
    try:
        there = await listening(other, "room")
        await listening(bus, "room")
        lost = REDIS_POSTS_LOST.labels("bus")._value.get()
        for n in range(8):  # in one loop turn: five wait, three find the queue full
            await bus.send_direct("room", "alice", "cart.added", {"n": n})
        await until(lambda: len(there.direct) == 5)
        assert REDIS_POSTS_LOST.labels("bus")._value.get() == lost + 3
        assert [message["n"] for _, message in there.direct] == [0, 1, 2, 3, 4]
    finally:
        await bus.stop()
        await other.stop()


def test_bad_bounds_are_refused() -> None:
    pool = aioredis.ConnectionPool.from_url("redis://127.0.0.1:6379/0")
    for kwargs, flag in (({"max_batch": 0}, "--redis-batch"), ({"max_posts": 0}, "--redis-direct-queue"),
                         ({"timeout": 0}, "--redis-timeout"), ({"connections": 0}, "--redis-pipelines")):
        with pytest.raises(ValueError, match=flag):
            RedisBatcher(pool, name="test", **{"timeout": 1.0, **kwargs})


# -- the batcher's own connections --------------------------------------------------------------


async def connections(client: aioredis.Redis) -> int:
    """Clients connected to Redis, the asking one included."""
    return len(await client.client_list())


@pytest.mark.parametrize("count", [1, 2])
async def test_pipelines_share_the_configured_connections_many_in_flight_on_each(
        own_redis: RedisServer, client: aioredis.Redis, count: int) -> None:
    pool = aioredis.ConnectionPool.from_url(own_redis.url)
    batcher = RedisBatcher(pool, name="test", timeout=5.0, max_batch=10, connections=count)
    try:
        before = await connections(client)
        for round in range(3):  # 20 pipelines at once, three times
            replies = await asyncio.gather(*(batcher.call("INCR", "n") for _ in range(CALLS)))
            assert sorted(replies) == list(range(round * CALLS + 1, (round + 1) * CALLS + 1))
        assert await connections(client) - before == count
        assert len(pool._available_connections) + len(pool._in_use_connections) == 0  # the pool is not used
    finally:
        await batcher.close()
    with pytest.raises(RedisConnectionError, match="closed"):
        await batcher.call("PING")


async def test_error_replies_are_redis_py_s_exceptions_for_their_callers_only(client: aioredis.Redis) -> None:
    batcher = RedisBatcher(client.connection_pool, name="test", timeout=5.0)
    try:
        replies: list[Any] = await asyncio.gather(
            batcher.call("EVALSHA", "0" * 40, 0), batcher.call("SET", "k", "v"), batcher.call("NOSUCHCOMMAND"),
            batcher.call("GET", "k"), return_exceptions=True)
        assert isinstance(replies[0], NoScriptError)
        assert replies[1] == b"OK" and replies[3] == b"v"
        assert type(replies[2]) is ResponseError and "unknown command" in str(replies[2])
        await client.replicaof("127.0.0.1", "1")  # a replica (of nothing reachable): it refuses writes
        try:
            with pytest.raises(ReadOnlyError):
                await batcher.call("SET", "k", "w")
            script = client.register_script("return redis.call('SET', KEYS[1], 'w')")
            with pytest.raises(ReadOnlyError):  # a script's write too, after NOSCRIPT and its reload
                await batcher.evalsha(script, ["k"], [])
        finally:
            await client.replicaof("NO", "ONE")
        assert await batcher.call("SET", "k", "w") == b"OK"  # the connection goes on after errors
    finally:
        await batcher.close()


async def test_a_paused_redis_times_out_every_waiting_caller_within_the_timeout_then_is_reconnected(
        own_redis: RedisServer, client: aioredis.Redis) -> None:
    timeout = 0.5
    batcher = RedisBatcher(aioredis.ConnectionPool.from_url(own_redis.url), name="test", timeout=timeout,
                           max_batch=10, connections=2)
    try:
        assert await batcher.call("PING") == b"PONG"
        own_redis.pause()
        try:
            started = time.monotonic()
            # Pipelines written at different times on the same connections: the oldest one's
            # deadline fails them all.
            first = [asyncio.ensure_future(batcher.call("INCR", "n")) for _ in range(50)]
            await asyncio.sleep(timeout / 2)
            later = [asyncio.ensure_future(batcher.call("INCR", "n")) for _ in range(50)]
            answers = await asyncio.gather(*first, *later, return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            own_redis.resume()
        assert all(isinstance(answer, RedisTimeoutError) for answer in answers)
        assert waited < timeout + 0.5  # the oldest pipeline's deadline, not one per call or per pipeline
        before = await connections(client)
        assert await batcher.call("PING") == b"PONG"  # a new connection; the stalled ones were closed
        assert await connections(client) - before == 1
    finally:
        await batcher.close()


async def test_a_killed_redis_fails_callers_at_once_and_a_restarted_one_is_reconnected(
        own_redis: RedisServer) -> None:
    timeout = 5.0
    batcher = RedisBatcher(aioredis.ConnectionPool.from_url(own_redis.url), name="test", timeout=timeout)
    try:
        assert await batcher.call("SET", "k", "v") == b"OK"
        own_redis.stop()
        started = time.monotonic()
        answers = await asyncio.gather(*(batcher.call("GET", "k") for _ in range(CALLS)), return_exceptions=True)
        answers += await asyncio.gather(*(batcher.call("GET", "k") for _ in range(CALLS)), return_exceptions=True)
        assert all(type(answer) is RedisConnectionError for answer in answers)
        assert time.monotonic() - started < timeout  # refused: nobody waits for the timeout
        own_redis.start()
        assert await batcher.call("GET", "k") == b"v"  # the append-only file kept it
    finally:
        await batcher.close()


async def test_a_user_password_and_database_from_the_url_are_used(own_redis: RedisServer,
                                                                  client: aioredis.Redis) -> None:
    await client.acl_setuser("tapper", enabled=True, passwords=["+tap pw"], keys=["*"], commands=["+@all"])
    url = f"redis://tapper:tap%20pw@127.0.0.1:{own_redis.port}/3"
    batcher = RedisBatcher(aioredis.ConnectionPool.from_url(url), name="test", timeout=5.0)
    wrong = RedisBatcher(aioredis.ConnectionPool.from_url(url.replace("tap%20pw", "nope")), name="test",
                         timeout=5.0)
    try:
        assert await batcher.call("SET", "k", "in 3") == b"OK"
        assert await batcher.call("ACL", "WHOAMI") == b"tapper"
        assert await client.get("k") is None
        await client.select(3)
        assert await client.get("k") == b"in 3"
        with pytest.raises(AuthenticationError):
            await wrong.call("GET", "k")
    finally:
        await batcher.close()
        await wrong.close()


async def test_tls_with_a_password_from_the_url(tls_redis: RedisServer, tmp_path: Any) -> None:  # noqa: F811
    url = tls_redis.url.replace("/0?", "/2?")
    batcher = RedisBatcher(aioredis.ConnectionPool.from_url(url), name="test", timeout=5.0)
    checker = aioredis.from_url(url)
    try:
        script = checker.register_script(_COUNTING)
        replies = await asyncio.gather(*(batcher.evalsha(script, ["n"], [i]) for i in range(CALLS)))
        assert replies == [str(i).encode() for i in range(CALLS)]
        assert int(await checker.get("n")) == CALLS  # in database 2, over TLS, with the password
    finally:
        await batcher.close()
        await checker.aclose()
    # Another CA's certificate is refused: the URL's ssl_ca_certs is the one checked against.
    assert tls_redis.tls is not None
    other = make_tls_files(tmp_path / "other")
    refused = RedisBatcher(aioredis.ConnectionPool.from_url(url.replace(quote(str(tls_redis.tls.ca)),
                                                                        quote(str(other.ca)))),
                           name="test", timeout=5.0)
    try:
        with pytest.raises(RedisConnectionError, match="certificate"):
            await refused.call("PING")
    finally:
        await refused.close()


def test_the_nodes_event_loop_uvloop_carries_the_connections(own_redis: RedisServer) -> None:
    """Nodes run on uvloop, whose transports are not asyncio's classes."""

    async def calls() -> list[Any]:
        batcher = RedisBatcher(aioredis.ConnectionPool.from_url(own_redis.url), name="test", timeout=5.0)
        try:
            return await asyncio.gather(*(batcher.call("INCR", "n") for _ in range(CALLS)),
                                        batcher.call("HGET", "n", "f"), return_exceptions=True)
        finally:
            await batcher.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        replies = runner.run(calls())
    assert replies[:CALLS] == list(range(1, CALLS + 1))
    assert isinstance(replies[CALLS], ResponseError) and "WRONGTYPE" in str(replies[CALLS])


async def test_a_paused_redis_that_wants_a_password_times_out_within_one_timeout(
        own_redis: RedisServer, client: aioredis.Redis) -> None:
    """Connecting includes AUTH and SELECT: a Redis that takes the connection (the kernel does for a
    stopped process) but never answers them fails the callers waiting for it within one timeout."""
    timeout = 0.5
    await client.config_set("requirepass", "pw")
    url = f"redis://:pw@127.0.0.1:{own_redis.port}/1"
    batcher = RedisBatcher(aioredis.ConnectionPool.from_url(url), name="test", timeout=timeout)
    try:
        own_redis.pause()
        try:
            started = time.monotonic()
            answers = await asyncio.gather(*(batcher.call("PING") for _ in range(CALLS)), return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            own_redis.resume()
        assert all(isinstance(answer, RedisTimeoutError) for answer in answers)
        assert waited < 2 * timeout
        assert await batcher.call("PING") == b"PONG"
    finally:
        await batcher.close()


async def test_a_unix_socket_url(tmp_path: Any) -> None:
    socket = tmp_path / "redis.sock"
    server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket",
                               str(socket), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    batcher = RedisBatcher(aioredis.ConnectionPool.from_url(f"unix://{socket}?db=4"), name="test", timeout=5.0)
    try:
        await until(socket.exists)
        assert await batcher.call("SET", "k", "v") == b"OK"
        info = await batcher.call("CLIENT", "INFO")
        assert b" db=4 " in info and await batcher.call("GET", "k") == b"v"
    finally:
        await batcher.close()
        server.kill()
        server.wait()

"""What only the Redis stock store has to get right: its key layout, its scripts surviving a Redis
that forgot them, and a Redis that stops answering."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot
from shopkit import Clock

from engine.storage import Database, StorageUnavailable
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.records import SqliteRecords
from overlays.shop import Shop
from overlays.stock.base import EMPTIED, REFILLED
from overlays.stock.redis import RedisStockStore
from tests.conftest import RedisTarget, free_port
from tests.redis_server import RedisServer


@pytest.fixture
async def store(redis_target: RedisTarget) -> AsyncIterator[RedisStockStore]:
    store = RedisStockStore.from_url(redis_target.url, prefix=redis_target.prefix)
    yield store
    await store.close()


async def test_a_rooms_keys_share_one_cluster_slot_under_the_prefix(store: RedisStockStore) -> None:
    for room in ("shop-a", "shop-b"):
        await store.define(room, "p", 5)
        await store.define(room, "s", 3)
        await store.reserve(room, "p", "ann", "t1", 1, None, time.time() + 60, 100)
        await store.reserve(room, "s", "bob", "t2", 1, 1, time.time() + 60, 100)
        lines = await store.commit(room, "bob", time.time(), "c1")
        await store.refund(room, lines)
    keys = [key async for key in store.client.scan_iter(match=store.prefix + "*")]
    slots: dict[str, set[int]] = {}
    for key in keys:
        room = key.decode().removeprefix(store.prefix).split("}")[0].removeprefix("{")
        slots.setdefault(room, set()).add(key_slot(key))
    assert set(slots) == {"shop-a", "shop-b"}
    assert all(len(room_slots) == 1 for room_slots in slots.values()), slots


async def test_scripts_are_loaded_again_when_redis_forgot_them(store: RedisStockStore) -> None:
    await store.define("room1", "p", 2)
    await store.client.script_flush()  # as after a Redis restart
    result = await store.reserve("room1", "p", "ann", "t1", 1, None, time.time() + 60, 100)
    assert result.ok and result.available == 1


async def test_a_redis_that_does_not_answer_is_unavailable_within_the_timeout() -> None:
    """A server that accepts connections and never replies (a hung or partitioned Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStockStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    try:
        async with asyncio.timeout(5):  # never a hang: the store gives up by itself
            with pytest.raises(StorageUnavailable) as refused:
                await store.reserve("room1", "p", "ann", "t1", 1, None, time.time() + 60, 100)
        assert refused.value.code == "unavailable"
    finally:
        await store.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_is_unavailable() -> None:
    store = RedisStockStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    try:
        with pytest.raises(StorageUnavailable):
            await store.counters("room1", "p")
        with pytest.raises(StorageUnavailable):
            await store.ping()
    finally:
        await store.close()


async def test_a_redis_that_turned_replica_answers_unavailable(own_redis: RedisServer) -> None:
    """A failover that leaves the node on a replica (writes refused with READONLY) is an outage to
    the client, answered `unavailable` so it retries, not an internal error."""
    import redis.asyncio as aioredis

    store = RedisStockStore.from_url(own_redis.url, prefix="t:", timeout=0.5)
    admin = aioredis.from_url(own_redis.url)
    try:
        await store.define("r", "p", 5)
        await admin.replicaof("127.0.0.1", "1")  # a replica of nothing reachable: it refuses writes
        with pytest.raises(StorageUnavailable) as refused:
            await store.reserve("r", "p", "u", "t1", 1, None, time.time() + 60, 100)
        assert refused.value.code == "unavailable"
        await admin.replicaof("NO", "ONE")
        assert (await store.reserve("r", "p", "u", "t1", 1, None, time.time() + 60, 100)).reservation is not None
    finally:
        await admin.aclose()
        await store.close()


async def test_request_ids_of_a_user_id_with_a_newline_are_forgotten_in_time(store: RedisStockStore) -> None:
    """User ids come from tokens a shop mints: any characters. The remembered tap of one whose id
    holds a newline is forgotten when its hold ends, like anyone's."""
    await store.define("room1", "p", 5)
    first = await store.reserve("room1", "p", "ann\nlee", "t1", 1, None, 10.0, 100)
    assert (await store.reserve("room1", "p", "ann\nlee", "t1", 1, None, 10.0, 100)).replay
    await store.expire("room1", 10.0)
    again = await store.reserve("room1", "p", "ann\nlee", "t1", 1, None, 20.0, 100)
    assert again.ok and not again.replay and again.reservation.id != first.reservation.id
    keys = {key.decode() async for key in store.client.scan_iter(match=store.prefix + "*req*")}
    assert store.prefix + "{room1}:req:ann\nlee" in keys


async def test_remembered_taps_leave_no_key_behind(store: RedisStockStore) -> None:
    """Tap results dropped by the per-user bound and those whose hold ended both leave every key
    that remembered them, so a busy room's request memory does not outgrow its taps."""
    store.max_user_requests = 2
    await store.define("room1", "p", 0)
    for n in range(5):
        assert (await store.reserve("room1", "p", "ann", f"t{n}", 1, None, 10.0 + n, 100)).code == "sold_out"
    await store.refuse("room1", "bob", "b1", "sale_not_live", "later", 12.0)
    base = f"{store.prefix}{{room1}}:"
    assert await store.client.lrange(base + "reql:ann", 0, -1) == [b"t3", b"t4"]
    assert sorted(await store.client.hkeys(base + "req:ann")) == [b"t3", b"t4"]
    assert await store.client.zrange(base + "reqx", 0, -1) == [b"bob\nb1", b"ann\nt3", b"ann\nt4"]
    await store.expire("room1", 13.0)
    assert await store.client.zrange(base + "reqx", 0, -1) == [b"ann\nt4"]
    assert await store.client.lrange(base + "reql:ann", 0, -1) == [b"t4"]
    await store.expire("room1", 14.0)
    keys = {key.decode() async for key in store.client.scan_iter(match=store.prefix + "*req*")}
    assert keys == set()


async def test_two_nodes_expiring_at_once_return_each_unit_once(redis_target: RedisTarget) -> None:
    nodes = [RedisStockStore.from_url(redis_target.url, prefix=redis_target.prefix) for _ in range(3)]
    try:
        await nodes[0].define("room1", "p", 1000)
        for n in range(600):  # more than one expiry batch
            await nodes[n % 3].reserve("room1", "p", f"u{n % 7}", f"t{n}", 1, None, 100.0 + n % 5, 100)
        returned = await asyncio.gather(*(node.expire("room1", 200.0 + i) for i, node in enumerate(nodes)))
        ids = [r.reservation.id for batch in returned for r in batch]
        assert len(ids) == len(set(ids)) == 600
        counters = await nodes[1].counters("room1", "p")
        assert (counters.available, counters.reserved) == (1000, 0)
    finally:
        for node in nodes:
            await node.close()


async def test_a_password_in_the_url_is_used(tmp_path: Path) -> None:
    """redis://:PASSWORD@HOST:PORT/DB reaches a Redis that requires it; a wrong password is refused."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        good = RedisStockStore.from_url(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=2.0)
        bad = RedisStockStore.from_url(f"redis://:wrong@127.0.0.1:{port}/2", timeout=2.0)
        try:
            await good.ping()
            assert (await good.define("room1", "p", 3)).available == 3
            with pytest.raises(StorageUnavailable):
                await bad.ping()
            with pytest.raises(StorageUnavailable):
                await bad.counters("room1", "p")
        finally:
            await good.close()
            await bad.close()
    finally:
        server.kill()
        server.wait()


async def test_each_move_to_and_from_no_unit_left_is_reported_to_one_caller(redis_target: RedisTarget) -> None:
    """Two stores on one Redis stand for two nodes: whichever call empties or refills the pool is
    told so (`turned`), and no other call is, so exactly one node announces each transition."""
    a = RedisStockStore.from_url(redis_target.url, prefix=redis_target.prefix)
    b = RedisStockStore.from_url(redis_target.url, prefix=redis_target.prefix)
    try:
        assert (await a.define("r", "s", 2)).turned == 0
        assert (await a.reserve("r", "s", "u1", "t1", 1, None, 100.0, 5)).turned == 0
        emptied = await b.reserve("r", "s", "u2", "t2", 1, None, 100.0, 5)
        assert (emptied.available, emptied.turned) == (0, EMPTIED)
        replay = await b.reserve("r", "s", "u2", "t2", 1, None, 100.0, 5)  # the first result, changing nothing
        assert replay.replay and replay._replace(replay=False) == emptied
        assert (await a.reserve("r", "s", "u3", "t3", 1, None, 100.0, 5)).code == "sold_out"
        assert await a.release("r", "u1", emptied.reservation.id) is None  # not u1's
        back = await a.release("r", "u2", emptied.reservation.id)
        assert back is not None and (back.available, back.turned) == (1, REFILLED)
        again = await b.reserve("r", "s", "u3", "t4", 1, None, 100.0, 5)
        assert again.turned == EMPTIED
        sold = await a.commit("r", "u3", 1.0)
        refunded = await b.refund("r", sold)
        assert (refunded["s"].available, refunded["s"].turned) == (1, REFILLED)
        expiring = await a.reserve("r", "s", "u4", "t5", 1, None, 2.0, 5)
        assert expiring.turned == EMPTIED
        [expired] = await b.expire("r", 3.0)
        assert expired.turned == REFILLED
        assert [r.turned for r in await a.expire("r", 3.0)] == []  # expired once, by one caller
    finally:
        await a.close()
        await b.close()


async def test_a_tap_through_the_shop_is_one_redis_call(own_redis: RedisServer) -> None:
    """Counted by a Redis of the test's own (INFO commandstats): a tap that reserves, one that
    empties the pool (and learns it must announce so), one refused as sold out and one refused
    by a pool closed through another node's copy of the shop each make one script call."""
    import redis.asyncio as aioredis

    store = RedisStockStore.from_url(own_redis.url, prefix="t:")
    db = Database(":memory:", threaded=False)
    records = SqliteRecords(db, SqlitePurchaseLog(db))
    clock = Clock()
    shop = Shop("r", "h", stock=store, records=records, clock=clock)
    admin = aioredis.from_url(own_redis.url)
    try:
        await store.define("r", "probe", 1)  # the scripts are loaded before counting
        await store.reserve("r", "probe", "p", "p", 1, None, clock() + 60, 1)
        await shop.put_product({"id": "mug", "title": "Mug", "price": 500, "currency": "EUR", "stock": 10})
        sale = (await shop.start_sale({"id": "s", "product_id": "mug", "price": 100, "quantity": 2,
                                       "duration": 60, "per_user_limit": 1})).result
        assert sale["state"] == "live"
        other = Shop("r", "h", stock=store, records=records, clock=clock)  # a second node's copy
        await other.load()

        async def calls() -> int:
            """Scripts run (every stock call is one; what a script calls inside is counted apart)."""
            stats = await admin.info("commandstats")
            return sum(int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval"))

        async def tap(user: str, request: str, on: Shop = shop) -> Any:
            before = await calls()
            outcome = await on.tap_or_refusal(user, request, sale_id="s")
            assert await calls() - before == 1, outcome
            return outcome

        await tap("u1", "t1")
        emptied = await tap("u2", "t2")
        assert [e.type for e in emptied.events] == ["cart.added", "sale.remaining", "sale.sold_out"]
        assert (await tap("u3", "t3")).code == "sold_out"
        await shop.end_sale("s")
        # A node that has not read the end yet still takes the tap to the store, which refuses it.
        refused = await tap("u4", "t4", other)
        assert (refused.code, refused.message) == ("sale_not_live", "sale s is ended")
    finally:
        await admin.aclose()
        await store.close()

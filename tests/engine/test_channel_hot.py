"""Hot answers on Redis (signaling.channel ``Action.hot``): stepped from the callbacks of the futures
they await, without a task. They keep each connection's order, leave with what they caused in one
write, answer a handler that awaits what only a task can (as redis-py's calls do) with an error
instead of crashing, and are finished before the engine stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.app import App
from engine.config import Config
from signaling.channel import Session
from tests.conftest import RedisTarget, connect, running, token
from tests.engine.test_channel_answers import VIEWERS, CountingTransport

REPLY_AFTER = 0.05  # how long the stand-in for a Redis reply takes


@pytest.fixture
async def engine(config: Config, redis_target: RedisTarget) -> AsyncIterator[App]:
    async with running(config.replace(redis_url=redis_target.url, redis_prefix=redis_target.prefix)) as app:
        add_hot_actions(app)
        yield app


def add_hot_actions(app: App) -> None:
    """`hot` sends its user a note (as a tap's `cart.added`), yields once, then waits on a plain future
    resolved by a timer (as a tap waits on its pipelined script) and answers; `taskbound` enters
    ``asyncio.timeout``, which needs a task, as redis-py's calls do."""
    app.hot_finished = []  # type: ignore[attr-defined]

    async def hot(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        reply: asyncio.Future[str] = loop.create_future()
        loop.call_later(float(message.get("wait", REPLY_AFTER)), reply.set_result, "replied")
        value = await reply
        hub = app.channel.hubs.get(session.room)  # gone if the client left meanwhile (the engine stopping)
        if hub is not None:
            hub.on_direct(session.sub, {"type": "note", "n": message["id"]})
        app.hot_finished.append(message["id"])  # type: ignore[attr-defined]
        return {"hot": value}

    async def taskbound(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        async with asyncio.timeout(1):
            await asyncio.sleep(0.01)
        return {"never": True}

    def always(session: Session, message: dict[str, Any]) -> bool:
        return True

    app.channel.actions.register("hot", VIEWERS, hot, inline=True, hot=always)
    app.channel.actions.register("taskbound", VIEWERS, taskbound, inline=True, hot=always)


async def test_hot_answers_keep_the_connections_order_and_leave_in_one_write(engine: App) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    for n in range(1, 4):
        await client.send({"type": "hot", "id": n, "wait": REPLY_AFTER * (4 - n)})  # later ones reply sooner
    assert [(a["re"], a["hot"]) for a in await client.answers(3)] == [(1, "replied"), (2, "replied"), (3, "replied")]

    (session,) = engine.channel.sessions.values()
    counting = CountingTransport(session.connection.transport)
    session.connection.transport = counting  # type: ignore[assignment]
    await client.send({"type": "hot", "id": 9})
    note = await client.recv_type("note")
    ack = await client.recv()
    assert (note["n"], ack["type"], ack["re"]) == (9, "ack", 9)
    assert counting.writes == 1  # the note and the answer
    await client.close()


async def test_a_hot_handler_that_needs_a_task_is_answered_with_an_error(engine: App) -> None:
    client = await connect(engine)
    await client.recv_type("snapshot")
    await client.send({"type": "taskbound", "id": "t"})
    await client.send({"type": "hot", "id": "h"})
    refused, answered = await client.answers(2)
    assert (refused["type"], refused["re"], refused["code"]) == ("error", "t", "internal")
    assert (answered["type"], answered["re"]) == ("ack", "h")  # the connection goes on
    await client.close()


async def test_the_engine_stops_after_the_hot_answers_in_flight(config: Config, redis_target: RedisTarget) -> None:
    async with running(config.replace(redis_url=redis_target.url, redis_prefix=redis_target.prefix)) as app:
        add_hot_actions(app)
        client = await connect(app, token(app, sub="late"))
        await client.recv_type("snapshot")
        await client.send({"type": "hot", "id": "inflight", "wait": 0.5})
        while not app.channel._stepped:  # the message reached the channel
            await asyncio.sleep(0.01)
    # `running` stopped the engine: the answer's work was done first.
    assert app.hot_finished == ["inflight"]  # type: ignore[attr-defined]
    assert not app.channel._stepped

"""Three real `livecart serve --redis-url` processes serving one room, as a load balancer spreads its
audience: viewers on every node see the same events with the same seqs in the same order, whichever
node a chat, a REST call or a host action came through; and a viewer that drops from one node and
comes back on another with `since` gets exactly the events it missed, no gap, no duplicate."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import websockets

from tests.commerce.test_commerce_cross_node import MUG, serve
from tests.conftest import Client, RedisTarget

CHATS = 4  # per viewer, sent at once from every node (within the chat burst)


class Recorder:
    """Everything a client receives, read by a task of its own, so actions can be sent from several
    places at once while nothing the room sends is skipped."""

    def __init__(self, client: Client) -> None:
        self.client, self.messages = client, []
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.client.ws:  # until the connection closes
            self.messages.append(orjson.loads(raw))
            self._arrived.set()

    async def first(self, match: Any) -> dict[str, Any]:
        """The first message received (or to come, within 10 s) for which ``match`` is true."""
        async with asyncio.timeout(10.0):
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                self._arrived.clear()
                await self._arrived.wait()

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.client.send(message)
        return await self.first(lambda m: m.get("re") == message["id"] and m["type"] in ("ack", "error"))

    async def events_until(self, text: str) -> list[dict[str, Any]]:
        """The room's events (messages with a seq) up to and including the chat ``text``."""
        end = await self.first(lambda m: m["type"] == "chat" and m["text"] == text)
        events = [m for m in self.messages if "seq" in m and m["type"] != "ack"]  # a chat ack names its seq
        return events[:events.index(end) + 1]

    async def close(self) -> None:
        self._task.cancel()
        await self.client.close()


def after(events: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    return [event for event in events if event["seq"] > seq]


async def chat(client: Recorder, text: str) -> None:
    answer = await client.request({"type": "chat", "id": text, "text": text})
    assert answer["type"] == "ack", answer


async def test_viewers_on_three_nodes_see_one_stream_and_resume_on_another_node(
    processes: list[subprocess.Popen[str]], tmp_path: Path, redis_target: RedisTarget,
) -> None:
    a, b, c = (serve(processes, tmp_path / name, name, redis_target) for name in "abc")
    async with aiohttp.ClientSession() as session:
        host = Recorder((await c.join(session, "host", "h"))[0])
        viewers = [Recorder((await node.join(session, "viewer", f"v-{name}"))[0])
                   for node, name in ((a, "a"), (b, "b"), (c, "c"))]
        on_a, on_b, on_c = viewers

        # A marker every node has seen before the window opens: the window starts at its seq.
        await chat(host, "open")
        opened = [(await viewer.events_until("open"))[-1]["seq"] for viewer in viewers]
        assert len(set(opened)) == 1, opened

        # Everything at once, through every node: chats from each node's viewer, a product put through
        # B's REST, a sale started through A's REST, a tag pinned by the host on C.
        product = await b.ok(session, "PUT", "/api/rooms/demo/products/mug", MUG)
        await asyncio.gather(
            *(chat(viewer, f"{n}-{i}") for n, viewer in enumerate(viewers) for i in range(CHATS)),
            a.ok(session, "POST", "/api/rooms/demo/sales",
                 {"product_id": product["product"]["id"], "price": 500, "quantity": 10, "duration": 600}),
            host.request({"type": "pin", "id": "pin", "tag": {"product_id": "mug", "x": 0.5, "y": 0.5}}),
        )
        await chat(host, "close")
        streams = [after(await viewer.events_until("close"), opened[0]) for viewer in viewers]

        assert streams[0] == streams[1] == streams[2]  # same events, same seqs, same order, same bodies
        seqs = [event["seq"] for event in streams[0]]
        assert seqs == list(range(opened[0] + 1, seqs[-1] + 1))  # every seq, once, in order
        types = [event["type"] for event in streams[0]]
        assert types.count("chat") == 3 * CHATS + 1
        assert {"product.put", "sale.started", "tag.pinned"} <= set(types)

        # The viewer on A drops; the room goes on through B and C; it comes back on B with `since`.
        last = seqs[-1]
        await on_a.close()
        await asyncio.gather(chat(on_b, "later-b"), chat(on_c, "later-c"),  # what is left of their chat burst
                             c.ok(session, "PUT", "/api/rooms/demo/products/mug", {**MUG, "price": 1100}))
        await b.ok(session, "DELETE", "/api/rooms/demo/tags/" + streams[0][types.index("tag.pinned")]["id"])
        await chat(host, "again")
        missed = after(await on_b.events_until("again"), last)
        assert after(await on_c.events_until("again"), last) == missed

        minted = await b.ok(session, "POST", "/api/rooms/demo/tokens", {"role": "viewer", "sub": "v-a"})
        back = Recorder(Client(await websockets.connect(
            f"ws://127.0.0.1:{b.ws_port}/ws?token={minted['token']}&since={last}", max_queue=None)))
        replayed = await back.events_until("again")
        assert not [m for m in back.messages if m["type"] in ("snapshot", "resync")]
        assert replayed == missed  # exactly what it missed: no snapshot, no gap, no duplicate
        assert [event["seq"] for event in replayed] == list(range(last + 1, missed[-1]["seq"] + 1))
        assert "tag.unpinned" in [event["type"] for event in replayed]
        for client in (back, on_b, on_c, host):
            await client.close()


"""A room's own recording setting over the real HTTP API, honoured by a real WHIP publisher's next
broadcast: the host turns recording off (and on again); the admin may too; nobody else may."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from media_peers import broadcast
from test_recording_failures import engine_config, listing, running, wait_for
from test_recording_http import stop

from engine.app import App
from tests.conftest import token


async def patch(http: aiohttp.ClientSession, engine: App, body: Any, bearer: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with http.patch(f"http://127.0.0.1:{engine.http_port}/api/rooms/demo", json=body,
                          headers=headers) as response:
        return response.status, await response.json()


async def test_the_host_turns_a_rooms_recording_off_and_on(tmp_path: Path, h264, opus) -> None:
    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        host = token(engine, "demo", "host", "host")
        status, room = await patch(http, engine, {}, host)
        assert status == 200 and room["record"] is True  # on by default

        # who may, and what
        assert (await patch(http, engine, {"record": False}, None))[0] == 401
        status, body = await patch(http, engine, {"record": False}, token(engine, "demo", "viewer", "v1"))
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await patch(http, engine, {"record": False}, token(engine, "other", "host", "host"))
        assert status == 403 and body["error"] == {"code": "forbidden", "message": "token is not valid for this room"}
        status, body = await patch(http, engine, {"record": False, "title": "Mine now"}, host)
        assert status == 403 and "admin" in body["error"]["message"]
        for bad in ("no", "off", 0, [True], {"on": 1}):
            status, body = await patch(http, engine, {"record": bad}, host)
            assert status == 400 and body["error"]["code"] == "bad_request"
        assert engine.rooms.get("demo").record

        status, room = await patch(http, engine, {"record": False}, host)
        assert status == 200 and room["record"] is False and room["title"] == "Demo room"

        # a broadcast in a room that does not record: relayed, not recorded
        publisher = await broadcast(engine, http, h264, opus)
        await wait_for(lambda: asyncio.sleep(0, engine.media.room("demo").publisher_id is not None))
        await asyncio.sleep(2.5)  # past a keyframe or two, when a recording would have started
        assert engine.recordings.recording("demo") is None and await listing(http, engine) == []

        # turned on during it: honoured at the next broadcast, not this one
        status, room = await patch(http, engine, {"record": True}, "test-admin")
        assert status == 200 and room["record"] is True
        await asyncio.sleep(2.5)
        assert await listing(http, engine) == []
        await stop(engine, http, publisher)

        publisher = await broadcast(engine, http, h264, opus)
        [recording] = await wait_for(lambda: listing(http, engine))
        assert recording["state"] == "recording"
        await stop(engine, http, publisher)

    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        assert engine.rooms.get("demo").record  # kept in the data directory
        assert (await patch(http, engine, {"record": False}, "test-admin"))[0] == 200
    async with running(engine_config(tmp_path)) as engine, aiohttp.ClientSession() as http:
        assert not engine.rooms.get("demo").record
        publisher = await broadcast(engine, http, h264, opus)
        await asyncio.sleep(2.5)
        assert [r["state"] for r in await listing(http, engine)] == ["complete"]  # only the earlier one
        await stop(engine, http, publisher)

"""One data directory, one serving process: a second `livecart serve` on it is refused at start, and
a directory whose records contradict themselves (more units sold than a pool offers, a record that
cannot be read) still starts and serves every room it can, reporting the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from commercekit import MUG, Rest, joined, running

from engine.config import Config
from tests.conftest import free_port


def _serve(data_dir: Path, **popen: object) -> tuple[subprocess.Popen[str], int]:
    http_port = free_port()
    proc = subprocess.Popen(
        ["livecart", "serve", "--http-port", str(http_port), "--ws-port", str(free_port()),
         "--data-dir", str(data_dir), "--demo-room", "demo"],
        text=True, **popen)  # type: ignore[call-overload]
    return proc, http_port


async def _ready(proc: subprocess.Popen[str], http_port: int) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "livecart serve exited"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{http_port}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError("livecart serve did not come up")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_a_second_server_on_one_data_directory_exits_naming_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first, first_port = _serve(data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _ready(first, first_port)
        second, _ = _serve(data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = second.communicate(timeout=30)
        finally:
            _stop(second)
        assert second.returncode == 2, (second.returncode, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("livecart serve: "), err
        assert str(data_dir) in lines[0] and f"pid {first.pid}" in lines[0], err
        await _ready(first, first_port)  # the first one serves on, undisturbed
    finally:
        _stop(first)
    # Once the first has stopped, the directory is free again.
    third, third_port = _serve(data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _ready(third, third_port)
    finally:
        _stop(third)


@pytest.fixture
def config(config: Config) -> Config:
    return config.replace(demo_room="demo")


async def _sell_one(app: object, room: str, user: str) -> dict[str, object]:
    alice, _ = await joined(app, sub=user, room=room)  # type: ignore[arg-type]
    assert (await alice.request({"type": "tap", "id": "t", "product_id": "mug"}))["type"] == "ack"
    ack = await alice.request({"type": "checkout", "id": "buy"})
    await alice.close()
    assert ack["type"] == "ack", ack
    return ack["order"]


async def test_an_inconsistent_directory_still_serves_every_room_it_can(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(config) as app:
        for room in ("other", "broken"):
            await app.rooms.create(room)
        for room in ("demo", "other", "broken"):
            host, _ = await joined(app, "host", "hana", room=room)
            await host.request({"type": "product.put", "id": 1, "product": {**MUG, "stock": 1}})
            await host.close()
        order = await _sell_one(app, "demo", "alice")
    # What two processes selling from one directory leave behind: a second order for the last
    # unit of demo's mug. And a product record of another room that cannot be read at all.
    with sqlite3.connect(Path(config.data_dir) / "livecart.db") as conn:
        conn.execute("INSERT INTO orders (room, id, user, request_id, status, logged, currency, quantity, total,"
                     " placed_at, body) SELECT room, 'o_twin', 'bob', request_id, status, logged, currency,"
                     " quantity, total, placed_at, json_set(CAST(body AS TEXT), '$.id', 'o_twin', '$.user', 'bob')"
                     " FROM orders WHERE id = ?", (order["id"],))
        conn.execute("INSERT INTO order_lines (room, order_id, n, pool, quantity) SELECT room, 'o_twin', n,"
                     " pool, quantity FROM order_lines WHERE order_id = ?", (order["id"],))
        conn.execute("UPDATE products SET body = x'00ff' WHERE room = 'broken'")
    conn.close()

    caplog.set_level(logging.ERROR, "overlays.runtime")
    async with running(config) as app, aiohttp.ClientSession() as session:
        rest = Rest(app, session)
        # The healthy room sells as before.
        assert (await _sell_one(app, "other", "carol"))["quantity"] == 1
        # The oversold room serves: sold out, both orders listed, a tap refused as sold out.
        status, body = await rest.call("GET", "/api/rooms/demo/products/mug")
        assert status == 200 and body["product"]["available"] == 0
        status, body = await rest.call("GET", "/api/rooms/demo/orders", app.admin_key)
        assert sorted(o["id"] for o in body["orders"]) == sorted([order["id"], "o_twin"])
        dave, snapshot = await joined(app, sub="dave", room="demo")
        assert snapshot["products"][0]["available"] == 0
        assert (await dave.request({"type": "tap", "id": "t", "product_id": "mug"}))["code"] == "sold_out"
        await dave.close()
        # The unreadable room answers unavailable for its shop; its clients still join.
        status, body = await rest.call("GET", "/api/rooms/broken/products")
        assert status == 503 and body["error"]["code"] == "unavailable"
        erin, _ = await joined(app, sub="erin", room="broken")
        assert (await erin.request({"type": "tap", "id": "t", "product_id": "mug"}))["code"] == "unavailable"
        await erin.close()
        # Both are reported to the operator: in the log and on /metrics.
        messages = [r.getMessage() for r in caplog.records]
        assert any("room demo" in m and "2 units sold but offers 1" in m for m in messages), messages
        assert any("room broken" in m for m in messages), messages
        async with session.get(f"{rest.base}/metrics") as response:
            text = await response.text()
        assert "livecart_commerce_oversold_pools 1.0" in text
        assert "livecart_commerce_unloaded_rooms 1.0" in text

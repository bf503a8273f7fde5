"""A real `livecart serve` on a Redis that speaks TLS only and requires a password, both given in the
URL: ``rediss://:PASSWORD@HOST:PORT/DB?ssl_ca_certs=CA&ssl_cert_reqs=required``. The node verifies
Redis's certificate against that CA (a certificate from another CA is refused at start), a viewer
joins, taps and checks out through it, `livecart token` reads the nodes' secret through the same URL,
and a wrong password is one clear line at start, which never shows the password."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import redis
import websockets

from signaling.tokens import verify
from tests.cluster_nodes import Node
from tests.conftest import Client
from tests.engine.test_cli import clean_env, fails_to_start, livecart, start_server
from tests.redis_server import RedisServer
from tests.tls_certs import make_tls_files

ADMIN = "tls-admin-key"
PASSWORD = "s3cret: p@ss/word"  # characters a URL must quote, so the quoting is tested too
MUG = {"title": "Mug", "price": 1200, "currency": "EUR", "stock": 5}


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server on TLS only (no plain port), with a password, its certificate from a CA made here."""
    server = RedisServer(tls=make_tls_files(tmp_path / "certs"), password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_the_tls_redis_has_no_plain_port_and_wants_the_password(tls_redis: RedisServer) -> None:
    """What the other tests rely on: a plain connection or no password does not get in."""
    with pytest.raises(redis.ConnectionError), redis.Redis(port=tls_redis.port, socket_timeout=2) as plain:
        plain.ping()
    assert tls_redis.tls is not None
    no_password = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={quote(str(tls_redis.tls.ca))}"
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(no_password, socket_timeout=2) as client:
        client.set("k", "v")


async def test_a_node_on_tls_redis_with_a_password_serves_a_viewer_who_buys(
        tmp_path: Path, tls_redis: RedisServer) -> None:
    assert tls_redis.url.startswith("rediss://:") and "ssl_ca_certs=" in tls_redis.url
    proc, http_port, ws_port, _ = start_server(tmp_path / "node", "--redis-url", tls_redis.url,
                                               "--admin-key", ADMIN, "--no-demo-catalog")
    assert proc.stdout is not None  # read on, so a chatty log never blocks the server on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    node = Node(proc, http_port, ws_port, ADMIN)
    try:
        async with aiohttp.ClientSession() as session:
            health = await node.ok(session, "GET", "/healthz")
            assert health.get("status", "ok") == "ok" and health["bus"] == {**health["bus"], "backend": "redis",
                                                                              "connected": True}, health
            await node.ok(session, "PUT", "/api/rooms/demo/products/mug", MUG)
            viewer, snapshot = await node.join(session, "viewer", "vera")
            assert [(p["id"], p["available"]) for p in snapshot["products"]] == [("mug", 5)]
            tap = await viewer.request({"type": "tap", "id": "t1", "product_id": "mug", "qty": 2})
            assert tap["type"] == "ack", tap
            order = await viewer.request({"type": "checkout", "id": "c1"})
            assert order["type"] == "ack" and order["order"]["quantity"] == 2, order
            listed = (await node.ok(session, "GET", "/api/rooms/demo/orders"))["orders"]
            assert [o["id"] for o in listed] == [order["order"]["id"]]
            product = (await node.ok(session, "GET", "/api/rooms/demo/products/mug"))["product"]
            assert product["available"] == 3
            await viewer.close()

            # `livecart token` reaches the same Redis by the same URL and signs with the nodes' secret:
            # the node accepts what it minted.
            minted = subprocess.run(livecart("token", "--room", "demo", "--role", "viewer", "--sub", "tom",
                                             "--redis-url", tls_redis.url, data_dir=tmp_path / "elsewhere"),
                                    capture_output=True, text=True, timeout=60, env=clean_env())
            assert minted.returncode == 0, minted.stderr
            token = minted.stdout.strip()
            with redis.Redis.from_url(tls_redis.url, socket_timeout=5) as client:
                secret = client.hget("livecart:{settings}:settings", "secret").decode()
            identity = verify(secret, token)
            assert (identity.room, identity.role, identity.sub) == ("demo", "viewer", "tom")
            async with websockets.connect(f"ws://127.0.0.1:{ws_port}/ws?token={token}") as ws:
                snapshot = await Client(ws).recv_type("snapshot")
                assert [(p["id"], p["available"]) for p in snapshot["products"]] == [("mug", 3)]
    finally:
        proc.terminate()
        proc.wait(20)


def wrong(url: str, password: str) -> str:
    return url.replace(quote(PASSWORD, safe=""), quote(password, safe=""))


def test_a_wrong_password_is_one_clear_line_at_start_without_the_password(
        tmp_path: Path, tls_redis: RedisServer) -> None:
    bad_url = wrong(tls_redis.url, "not-the-password")
    line = fails_to_start("--redis-url", bad_url, data_dir=tmp_path / "node")
    assert "(--redis-url)" in line and "invalid username-password pair" in line, line
    assert "not-the-password" not in line and ":***@127.0.0.1" in line, line

    token = subprocess.run(livecart("token", "--room", "demo", "--role", "viewer", "--redis-url", bad_url,
                                    data_dir=tmp_path / "elsewhere"),
                           capture_output=True, text=True, timeout=60, env=clean_env())
    assert token.returncode == 2 and token.stdout == "", (token.stdout, token.stderr)
    assert token.stderr.startswith("livecart token: ") and token.stderr.count("\n") == 1, token.stderr
    assert "invalid username-password pair" in token.stderr and "not-the-password" not in token.stderr


def test_a_redis_certificate_from_another_ca_is_refused_at_start(tmp_path: Path, tls_redis: RedisServer) -> None:
    assert tls_redis.tls is not None
    other_ca = make_tls_files(tmp_path / "other", ca_name="another CA").ca
    url = tls_redis.url.replace(quote(str(tls_redis.tls.ca)), quote(str(other_ca)))
    line = fails_to_start("--redis-url", url, data_dir=tmp_path / "node")
    assert "certificate verify failed" in line and "(--redis-url)" in line, line
    assert quote(PASSWORD, safe="") not in line

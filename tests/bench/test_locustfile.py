"""bench/locustfile.py run by locust against two real nodes sharing one Redis prefix, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisTarget, free_port
from tests.engine.test_cli import announcement

BENCH = Path(__file__).resolve().parents[2] / "bench"
ADMIN_KEY = "test-admin-key-0123456789"
SECRET = "test-secret-0123456789abcdef0123456789"

@pytest.fixture
def two_nodes(tmp_path: Path, redis_target: RedisTarget) -> Iterator[list[int]]:
    """Two `livecart serve` on one Redis prefix, with one admin key and secret; their HTTP ports."""
    procs: list[subprocess.Popen[str]] = []
    ports = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")}
    try:
        for i in range(2):
            http_port, ws_port = free_port(), free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "serve", "--http-port", str(http_port), "--ws-port",
                 str(ws_port), "--data-dir", str(tmp_path / f"node{i}"), "--redis-url", redis_target.url,
                 "--redis-prefix", redis_target.prefix, "--admin-key", ADMIN_KEY, "--secret", SECRET],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
            announcement(procs[-1])
            ports.append(http_port)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=20)


def run_locust(http_port: int, results: Path, **settings: str) -> str:
    """A short headless locust run of the shoppers; its summary table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")}
    env.update({"LIVECART_ROOM": "shop", "LIVECART_ADMIN_KEY": ADMIN_KEY, "LIVECART_RESULTS": str(results),
                "LIVECART_TAP_EVERY": "0.3", **settings})
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(BENCH / "locustfile.py"), "--host",
         f"http://127.0.0.1:{http_port}", "--headless", "-u", "4", "-r", "4", "-t", "5s", "--only-summary"],
        capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return results.read_text()


def rows(table: str) -> dict[str, list[str]]:
    """The summary's rows by `type name` (requests, failures, ...), and `errors of code` rows."""
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 3:
            found[f"{cells[0]} {cells[1]}"] = cells[2:]
    return found


def get_json(url: str, key: str = "") -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_shoppers_join_both_nodes_tap_the_sale_the_master_made_and_check_out(
        two_nodes: list[int], tmp_path: Path) -> None:
    table = run_locust(two_nodes[0], tmp_path / "run.md", LIVECART_SECRET=SECRET)
    found = rows(table)
    assert found["WS join"][:2] == ["4", "0"]
    assert int(found["WS tap"][0]) > 0 and found["WS tap"][1] == "0"
    assert found["WS checkout"][1] == "0" and int(found["WS checkout"][0]) > 0
    assert int(found["EVENT sale.remaining"][0]) > 0
    assert found["GET products"][1] == "0"
    assert "| none | | 0 |" in table
    # The sale the run set up is live on the other node too, with the units the shoppers bought gone.
    sales = get_json(f"http://127.0.0.1:{two_nodes[1]}/api/rooms/shop/sales")
    (sale,) = sales["sales"]
    assert sale["state"] == "live" and sale["remaining"] < sale["quantity"]
    orders = get_json(f"http://127.0.0.1:{two_nodes[1]}/api/rooms/shop/orders?limit=1000", ADMIN_KEY)["orders"]
    assert len(orders) >= int(found["WS checkout"][0])  # checkouts unanswered at the stop also count


def test_refused_taps_are_counted_by_their_code(two_nodes: list[int], tmp_path: Path) -> None:
    table = run_locust(two_nodes[1], tmp_path / "run.md", LIVECART_SALE="no-such-sale",
                       LIVECART_TOKEN_SOURCE="admin")
    found = rows(table)
    assert found["WS join"][:2] == ["4", "0"]
    taps, refused = found["WS tap"][:2]
    assert int(taps) > 0 and refused == taps
    assert found["WS tap not_found"] == [taps]
    assert "WS checkout" not in found  # nothing held, nothing to check out

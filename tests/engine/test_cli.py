"""The console script as an operator uses it: serve, mint tokens, stop with a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from signaling.tokens import verify
from tests.conftest import free_port


def livecart(*args: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args, "--data-dir", str(data_dir)]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], int, int, dict[str, str]]:
    http_port, ws_port = free_port(), free_port()
    proc = subprocess.Popen(
        livecart("serve", "--http-port", str(http_port), "--ws-port", str(ws_port), data_dir=data_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")},
    )
    info: dict[str, str] = {}
    deadline = time.time() + 30
    assert proc.stdout is not None
    while "host token" not in info and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if ":" in line and line.startswith("  "):
            key, _, value = line.strip().partition(":")
            info[key.strip()] = value.strip().split()[0] if value.strip() else ""
    assert "host token" in info, "server did not announce itself"
    return proc, http_port, ws_port, info


def test_token_command_uses_the_kept_secret(tmp_path: Path) -> None:
    proc, _, _, info = start_server(tmp_path)
    proc.terminate()
    proc.wait(10)
    out = subprocess.run(livecart("token", "--room", "demo", "--role", "host", "--sub", "ana", "--ttl", "60",
                                  data_dir=tmp_path), capture_output=True, text=True, check=True).stdout.strip()
    import sqlite3

    secret = sqlite3.connect(tmp_path / "livecart.db").execute(
        "SELECT value FROM settings WHERE key = 'secret'").fetchone()[0]
    identity = verify(secret, out)
    assert (identity.room, identity.role, identity.sub) == ("demo", "host", "ana")
    assert identity.exp - time.time() <= 61
    # The demo room and its stream key survive a restart, and so do tokens.
    again, _, _, info2 = start_server(tmp_path)
    again.terminate()
    again.wait(10)
    assert info2["stream key"] == info["stream key"]
    assert verify(secret, info["viewer token"]).room == "demo"
    bad = subprocess.run(livecart("token", "--room", "demo", "--role", "host", "--ttl", "-5", data_dir=tmp_path),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "ttl" in bad.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_resumably_and_exits(tmp_path: Path, sig: signal.Signals) -> None:
    proc, _, ws_port, info = start_server(tmp_path)

    async def watch() -> tuple[int | None, float]:
        async with websockets.connect(f"ws://127.0.0.1:{ws_port}/ws?token={info['viewer token']}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "snapshot"
            started = time.monotonic()
            proc.send_signal(sig)
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code, started

    code, started = asyncio.run(watch())
    assert code == 1012
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 10


def test_serve_refuses_a_bad_media_setting(tmp_path: Path) -> None:
    bad = subprocess.run(livecart("serve", "--ice-candidate-filter", "loopback,nowhere", "--http-port", "0",
                                  "--ws-port", "0", data_dir=tmp_path), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "livecart serve:" in bad.stderr and "'nowhere'" in bad.stderr and "Traceback" not in bad.stderr

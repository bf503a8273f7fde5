"""The console script as an operator uses it: serve, mint tokens, stop with a signal."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from websockets.exceptions import ConnectionClosed

from engine.media import aiortc_compat
from signaling.tokens import verify
from tests.conftest import free_port


def livecart(*args: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "engine.cli", *args, "--data-dir", str(data_dir)]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIVECART_")}


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_server_outlives_its_test() -> Iterator[None]:
    """A failing test must not leave its ``livecart serve`` running (holding ports and memory)."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start_server(data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], int, int, dict[str, str]]:
    http_port, ws_port = free_port(), free_port()
    proc = subprocess.Popen(
        livecart("serve", "--http-port", str(http_port), "--ws-port", str(ws_port), *args, data_dir=data_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
    )
    _started.append(proc)
    return proc, http_port, ws_port, announcement(proc)


def announcement(proc: subprocess.Popen[str]) -> dict[str, str]:
    """What a starting `livecart serve` prints: the line it serves on, then its tokens and keys."""
    info: dict[str, str] = {}
    deadline = time.time() + 30
    assert proc.stdout is not None
    while "host token" not in info and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("livecart serving on "):
            info["serving"] = line.strip()
        elif ":" in line and line.startswith("  "):
            key, _, value = line.strip().partition(":")
            info[key.strip()] = value.strip().split()[0] if value.strip() else ""
    assert "host token" in info, "server did not announce itself"
    return info


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


def stop_server(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then everything the server wrote (stdout and stderr) after its announcement."""
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out


def fails_to_start(*args: str, data_dir: Path, preexec_fn: Any = None) -> str:
    """Run ``livecart serve`` expecting a start-up failure: exit 2 and one line on stderr, returned."""
    done = subprocess.run(livecart("serve", "--http-port", "0", "--ws-port", "0", *args, data_dir=data_dir),
                          capture_output=True, text=True, timeout=60, env=clean_env(), preexec_fn=preexec_fn)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("livecart serve: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stderr


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        message = fails_to_start("--http-port", port, data_dir=tmp_path)
        assert f"port {port} (--http-port): Address already in use" in message
        message = fails_to_start("--ws-port", port, data_dir=tmp_path)
        assert f"port {port} (--ws-port): Address already in use" in message


def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    assert "forwarding must be one of" in fails_to_start("--forwarding", "slow", data_dir=tmp_path / "a")
    assert "--public-url" in fails_to_start("--public-url", "shop.example.com", data_dir=tmp_path / "b")
    assert "--log-level" in fails_to_start("--log-level", "loud", data_dir=tmp_path / "c")
    assert "gc policy" in fails_to_start("--gc-policy", "off", data_dir=tmp_path / "d")
    assert not any(tmp_path.iterdir()), "a refused setting must not create a data directory"


def without_root_override() -> None:
    """In the child: give up root's right to write anywhere, so a directory's mode bits apply to it too."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, out of the bounding set
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_data_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    try:
        for data_dir in (read_only, read_only / "data"):  # the directory itself, or where it would be made
            message = fails_to_start(data_dir=data_dir, preexec_fn=without_root_override)
            assert f"cannot use the data directory {data_dir} (--data-dir)" in message
    finally:
        read_only.chmod(0o755)


def test_a_full_data_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # no file may grow past 8 KiB

    message = fails_to_start(data_dir=tmp_path, preexec_fn=small_disk)
    assert f"cannot use the data directory {tmp_path} (--data-dir)" in message


def test_token_outside_the_data_directory_refuses_and_says_where_the_secret_is(tmp_path: Path) -> None:
    server_dir, elsewhere = tmp_path / "server", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc, _, _, _ = start_server(server_dir)
    stop_server(proc)
    # Run from another directory with the default --data-dir: there is no server there.
    done = subprocess.run([sys.executable, "-m", "engine.cli", "token", "--room", "demo", "--role", "viewer"],
                          capture_output=True, text=True, cwd=elsewhere, env=clean_env())
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.startswith("livecart token: no server data at ") and done.stderr.count("\n") == 1
    assert str(elsewhere / "livecart-data" / "livecart.db") in done.stderr and "--data-dir" in done.stderr
    assert not any(elsewhere.iterdir()), "no secret (nor directory) may be made up"
    # Pointed at the server's data directory, the token is signed with the server's secret.
    import sqlite3

    secret = sqlite3.connect(server_dir / "livecart.db").execute(
        "SELECT value FROM settings WHERE key = 'secret'").fetchone()[0]
    made = subprocess.run([sys.executable, "-m", "engine.cli", "token", "--room", "demo", "--role", "viewer",
                           "--data-dir", str(server_dir)], capture_output=True, text=True, cwd=elsewhere,
                          env=clean_env(), check=True)
    assert verify(secret, made.stdout.strip()).room == "demo"


def test_token_help_shows_only_its_own_options(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "engine.cli", "token", "--help"], capture_output=True, text=True,
                          check=True)
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", done.stdout))
    assert options == {"--help", "--room", "--role", "--sub", "--ttl", "--data-dir", "--secret", "--redis-url",
                       "--redis-prefix"}, options


def test_announcement_with_a_public_url_without_port(tmp_path: Path) -> None:
    proc, _, ws_port, info = start_server(tmp_path, "--public-url", "https://shop.example.com")
    stop_server(proc)
    assert info["serving"] == f"livecart serving on https://shop.example.com (websocket wss://shop.example.com:{ws_port}/ws)"
    assert info["watch"] == "https://shop.example.com/watch/demo"
    assert info["studio"].startswith("https://shop.example.com/studio/demo?token=")


def test_access_log_logs_paths_without_their_query(tmp_path: Path) -> None:
    proc, http_port, _, info = start_server(tmp_path, "--access-log")
    quiet, quiet_port, _, _ = start_server(tmp_path / "quiet")

    async def visit(port: int) -> None:
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", f"/studio/demo?token={info['host token']}&key=secret-key", "/api/nowhere"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    await response.read()

    asyncio.run(visit(http_port))
    asyncio.run(visit(quiet_port))
    logged, unlogged = stop_server(proc), stop_server(quiet)
    assert re.search(r'livecart.access: 127\.0\.0\.1 "GET /healthz" 200 \d+ [\d.]+ ms', logged), logged
    assert '"GET /studio/demo" 200' in logged and '"GET /api/nowhere" 404' in logged
    assert "secret-key" not in logged and info["host token"] not in logged
    assert "livecart.access" not in unlogged and "/healthz" not in unlogged


async def publish_audio(http_port: int, stream_key: str) -> RTCPeerConnection:
    """A WHIP publisher on loopback that connects (so ICE checks run on the server)."""
    pc = RTCPeerConnection()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    aiortc_compat.bind_ice(pc, ("127.0.0.1",))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{http_port}/whip/demo", data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {stream_key}"}) as response:
        assert response.status == 201, await response.text()
        await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
    for _ in range(200):
        if pc.connectionState == "connected":
            break
        await asyncio.sleep(0.05)
    assert pc.connectionState == "connected"
    return pc


@pytest.mark.parametrize("level", ["info", "debug"])
def test_ice_checks_are_logged_at_debug_only(tmp_path: Path, level: str) -> None:
    proc, http_port, _, info = start_server(tmp_path, "--announce", "127.0.0.1", "--ice-servers", "",
                                            "--log-level", level)

    async def publish() -> None:
        pc = await publish_audio(http_port, info["stream key"])
        await pc.close()

    asyncio.run(publish())
    out = stop_server(proc)
    checks = [line for line in out.splitlines() if "aioice" in line and "Check CandidatePair" in line]
    assert bool(checks) == (level == "debug"), out


def test_serve_refuses_a_bad_media_setting(tmp_path: Path) -> None:
    assert "'nowhere'" in fails_to_start("--ice-candidate-filter", "loopback,nowhere", data_dir=tmp_path)

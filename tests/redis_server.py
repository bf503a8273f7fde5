"""A Redis for the tests: the machine's own at 127.0.0.1:6379, or a redis-server started here.

Each test gets its own key prefix on that Redis (and removes its keys afterwards), so tests
never see each other's data and the machine's Redis keeps nothing of them. When no Redis
answers, one is started on a free port for the whole run; when there is no redis-server
either, Redis tests fail with the reason instead of skipping (CI installs it).
Tests that stop and restart Redis (fault tests) start their own ``RedisServer``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

MACHINE_REDIS = ("127.0.0.1", 6379)


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis answers PING at (host, port)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process of the test's own, on a free loopback port, that can be stopped and restarted.

    It keeps its data in an append-only file in its own directory, so a restart finds what a
    real deployment with ``appendonly yes`` would find."""

    def __init__(self, appendonly: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="livecart-redis-"))
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _answers("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop at once (SIGKILL), as a crash or a lost host would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SharedRedis:
    """The Redis the whole test run shares: the machine's, else one started for the run."""

    def __init__(self) -> None:
        self.own: RedisServer | None = None
        if _answers(*MACHINE_REDIS):
            self.url = f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/0"
        else:
            self.own = RedisServer(appendonly=False)
            self.own.start()
            self.url = self.own.url

    @staticmethod
    def new_prefix() -> str:
        """A key prefix no other test uses: ``livecart-test:<random>:``."""
        return f"livecart-test:{uuid.uuid4().hex[:12]}:"

    def close(self) -> None:
        if self.own is not None:
            self.own.close()

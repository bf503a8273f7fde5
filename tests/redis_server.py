"""A Redis for the tests: the machine's own at 127.0.0.1:6379, or a redis-server started here.

Each test gets its own key prefix on that Redis (and removes its keys afterwards), so tests
never see each other's data and the machine's Redis keeps nothing of them. When no Redis
answers, one is started on a free port for the whole run; when there is no redis-server
either, Redis tests fail with the reason instead of skipping (CI installs it).
Tests that stop and restart Redis (fault tests) start their own ``RedisServer``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import redis

from tests.tls_certs import TlsFiles

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

    It keeps its data in an append-only file (``appendfsync always``) in its own directory, so a
    restart finds what a real deployment with ``appendonly yes`` would find. With ``tls`` it
    listens on TLS only (``--port 0 --tls-port``); with ``password`` it requires it (``requirepass``)."""

    def __init__(self, appendonly: bool = True, *, tls: TlsFiles | None = None, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="livecart-redis-"))
        self.appendonly = appendonly
        self.tls, self.password = tls, password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a client reaches it by: ``rediss://`` verifying its certificate against the test's
        CA when it speaks TLS, with the password in the URL when it has one."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca))}&ssl_cert_reqs=required"

    def _answers(self) -> bool:
        if self.tls is None and self.password is None:
            return _answers("127.0.0.1", self.port)
        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always"]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop at once (SIGKILL), as a crash or a lost host would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and calls go unanswered, as with a stalled host
        or a network partition, until ``resume``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run on (SIGCONT); it answers what it was sent meanwhile."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

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

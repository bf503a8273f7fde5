"""nginx as the HLS cache of docs/OPERATIONS.md, run as a child process on loopback.

The ``location`` configuration is read from the ``nginx`` block of the operations guide, so the
guide shows what the tests ran; only its listening port, its upstream port and its cache directory
are replaced. Everything else nginx writes (temp files, pid, logs) stays in the test's directory.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port

NGINX = "/usr/sbin/nginx"
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def documented_config() -> str:
    """The nginx configuration under the guide's "nginx in front of /hls" heading."""
    text = GUIDE.read_text()
    section = text[text.index("### nginx in front of /hls"):]
    return re.search(r"```nginx\n(.*?)```", section, re.S).group(1)


def adapted(config: str, listen: int, upstream: int, cache: Path) -> str:
    """The guide's configuration with this test's ports and cache directory, and nothing else changed."""
    replaced = config.replace("/var/cache/nginx/livecart", str(cache))
    replaced = replaced.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    replaced = replaced.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{upstream}")
    assert replaced.count(str(cache)) == 1 and f":{listen};" in replaced and f":{upstream};" in replaced, replaced
    return replaced


class Nginx:
    """One non-daemon nginx serving the documented cache in front of ``upstream``."""

    def __init__(self, root: Path, upstream: int) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        temp = {name: root / name for name in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        self.log = root / "error.log"
        conf = root / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process off;
pid {root / 'nginx.pid'};
error_log {self.log} info;
events {{ worker_connections 1024; }}
http {{
    access_log {root / 'access.log'};
    client_body_temp_path {temp['client']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
{adapted(documented_config(), self.port, upstream, root / 'cache')}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-p", str(root), "-e", str(self.log), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

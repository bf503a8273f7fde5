"""What every bench measures the same way: percentiles, CPU time from /proc, the load on a core,
free ports, and the record of a run (commit, command, machine) written beside its results.

Why one module: figures from different benches are compared with each other in bench/RESULTS.md,
so a "p99" or a "CPU %" must mean the same thing in all of them, and every published figure must
come from a file a bench wrote, with the code version and the command that produced it.

Definitions (the only ones the benches use):

- ``percentile(values, q)``: the nearest-rank percentile, the smallest observed value such that at
  least q % of the values are less than or equal to it (``sorted[ceil(q / 100 * n) - 1]``; q = 0 is
  the minimum). Always an observed value, never an interpolation. ``median`` is ``percentile(.., 50)``,
  so the median of an even count of runs is the lower middle run, a figure some run really had.
- process CPU: utime + stime of the process (all its threads) from ``/proc/PID/stat``, in seconds.
- core busy: the jiffies of ``cpuN`` in ``/proc/stat`` spent in user, nice, system, irq, softirq and
  steal (guest time is already inside user); idle and iowait are not busy.
- others on a core: the core's busy share minus the share the measured server used, over the same
  interval (the server is pinned to that core, so all its CPU time is spent there). Softirq work the
  kernel charges to whichever task was running can shift a little between the two.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
REPO = HERE.parent

# -- percentiles ----------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (see the module docstring); None when there are no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Iterable[float | None]) -> float | None:
    """The nearest-rank median of the values that are not None (runs that lack a figure are skipped)."""
    return percentile([v for v in values if v is not None and not math.isnan(v)], 50)


def summary(values: Iterable[float], over: float | None = None) -> dict[str, float | int | None]:
    """Count, p50, p99 and max of ``values``; with ``over``, also how many exceed it."""
    ordered = sorted(values)
    out: dict[str, float | int | None] = {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "max": float(ordered[-1]) if ordered else None,
    }
    if over is not None:
        out[f"over{over:g}"] = sum(1 for v in ordered if v > over)
    return out


# -- CPU accounting -------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main_thread_on_cpu_ns(pid: int) -> int:
    """Nanoseconds the process's main thread (its event loop) has run on a CPU (/proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat", "rb") as f:
        return int(f.read().split()[0])


def core_jiffies(core: int, stat: str | None = None) -> tuple[int, int]:
    """(busy, total) jiffies of one core since boot, from /proc/stat (or the given text of it)."""
    text = Path("/proc/stat").read_text() if stat is None else stat
    for line in text.splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    raise ValueError(f"no cpu{core} in /proc/stat")


@dataclass
class CoreShare:
    """One interval on one core: its length, the server's CPU seconds, the core's busy share (1.0 = all)."""

    seconds: float
    cpu: float
    busy: float

    @property
    def server(self) -> float:
        """The server's share of the core."""
        return self.cpu / self.seconds if self.seconds > 0 else 0.0

    @property
    def others(self) -> float:
        """The core's busy share that was not the server's (other processes, their interrupts)."""
        return max(0.0, self.busy - self.server)


class CoreWindow:
    """Measures, over one interval, a pinned server's CPU and the rest of the load on its core.

    The server may be several processes pinned to the core (the nodes of a cluster bench): their CPU
    times are summed."""

    def __init__(self, pid: int | Sequence[int] | None, core: int = 0) -> None:
        self.pids: tuple[int, ...] = () if pid is None else (pid,) if isinstance(pid, int) else tuple(pid)
        self.core = core
        self._start: tuple[float, float, tuple[int, int]] | None = None

    def start(self) -> None:
        self._start = (time.monotonic(), self._cpu(), core_jiffies(self.core))

    def stop(self) -> CoreShare:
        """The shares since ``start``; the window may be stopped more than once."""
        assert self._start is not None, "CoreWindow.stop before start"
        t0, cpu0, (busy0, total0) = self._start
        seconds = time.monotonic() - t0
        busy1, total1 = core_jiffies(self.core)
        busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        return CoreShare(seconds, self._cpu() - cpu0, busy)

    def _cpu(self) -> float:
        return sum(process_cpu(pid) for pid in self.pids)


def core_busy_share(core: int, seconds: float) -> float:
    """The busy share of a core over the next ``seconds`` (blocks)."""
    busy0, total0 = core_jiffies(core)
    time.sleep(seconds)
    busy1, total1 = core_jiffies(core)
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def prioritise(pid: int, nice: int) -> None:
    """Give a server started with ``start_new_session=True`` the nice value ``nice`` against all else.

    With the kernel's autogroup scheduling (``kernel.sched_autogroup_enabled = 1``) CPU time is
    shared between sessions first, and a process's own nice value only ranks it within its
    session, so a bench server on a core other sessions also use gets an equal share per session
    whatever its nice. In its own session, its autogroup's nice value is what counts.
    """
    if nice == 0:
        return
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if autogroup.exists() and autogroup.read_text().strip() == "1":
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    else:
        os.setpriority(os.PRIO_PROCESS, pid, nice)


# -- ports ----------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the record of a run --------------------------------------------------------------------------


def _git(*argv: str, repo: Path = REPO) -> str:
    """Git's output with trailing whitespace removed (leading spaces are part of `status --porcelain`)."""
    return subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True, check=False).stdout.rstrip()


# Files no bench runs: editing them while a bench runs does not change what it measures.
NOT_MEASURED = ("bench/results/", "bench/RESULTS.md", "bench/report.py", "tests/", "docs/")


def commit(repo: Path = REPO) -> str:
    """The checked-out commit of ``repo`` (this checkout unless another is measured beside it), with
    ``+dirty`` when a file a bench may run differs from it."""
    head = _git("rev-parse", "--short=12", "HEAD", repo=repo) or "unknown"
    changed = [line[3:] for line in _git("status", "--porcelain", repo=repo).splitlines()]
    return head + ("+dirty" if any(not path.startswith(NOT_MEASURED) for path in changed) else "")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU model and count, kernel, Python, load when the run began."""
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def record(bench: str) -> dict[str, Any]:
    """Commit, exact command, machine and start time of this run of ``bench``."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return {
        "bench": bench,
        "commit": commit(),
        "command": shlex.join(["python", script, *sys.argv[1:]]),
        "machine": machine(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: ``-`` for a missing figure, floats to ``digits`` places."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, run: dict[str, Any], markdown: str, data: Any, directory: Path = RESULTS_DIR) -> Path:
    """Write ``NAME.md`` (the run's record, then ``markdown``) and ``NAME.json`` (record + ``data``).

    bench/report.py splices the markdown into bench/RESULTS.md, so every figure there is one a
    bench wrote. Returns the markdown file's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    host = run["machine"]
    head = (
        f"Generated by `{run['command']}`\n"
        f"at commit `{run['commit']}`, {run['started_utc']} to {finished}, on {host['cores']} x {host['cpu']} "
        f"(Linux {host['kernel']}, Python {host['python']}, load average at start "
        f"{' / '.join(str(v) for v in host['loadavg_at_start'])}).\n\n"
    )
    md = directory / f"{name}.md"
    md.write_text(head + markdown.rstrip() + "\n")
    (directory / f"{name}.json").write_text(
        json.dumps({**run, "finished_utc": finished, "results": data}, indent=1, default=str) + "\n"
    )
    return md

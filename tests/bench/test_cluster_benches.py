"""The fan-out and tap-storm benches in their cluster mode (--nodes): they start their own Redis and
two real nodes beside the memory-backed engine, and write their results. Tiny sizes, no timing checks:
this only shows the modes run end to end and report what they counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, out: Path, *argv: str) -> dict:
    """Run a bench with --nodes 2, results to ``out``.{md,json}; its JSON record."""
    done = subprocess.run([sys.executable, str(BENCH / script), "--nodes", "2", "--name", str(out), *argv],
                          capture_output=True, text=True, timeout=120, cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Cores: all 2 nodes on core 0" in out.with_suffix(".md").read_text()
    return json.loads(out.with_suffix(".json").read_text())


def test_fanout_reaches_the_viewers_of_every_node_through_redis(tmp_path: Path) -> None:
    record = run_bench("fanout.py", tmp_path / "fanout", "--matrix", "20x10", "--duration", "1",
                       "--warmup", "0.3", "--procs", "2", "--pause", "0")
    runs = {run["server"]: run for run in record["results"]["runs"]}
    assert record["results"]["failed"] == []
    assert set(runs) == {"engine", "nodes"}
    assert runs["nodes"]["nodes"] == 2 and runs["engine"]["nodes"] == 1
    for run in runs.values():
        assert run["viewers"] == 40 and run["missed"] == 0 and run["seq_gaps"] == 0
        assert run["deliveries"] == 40 * run["events"]
    assert runs["nodes"]["cross_p99_ms"] is not None  # the second node's viewers got the events
    assert runs["nodes"]["redis_commands"]["publish"] >= runs["nodes"]["events"]
    assert "redis_cpu_s" not in runs["engine"]


def test_tapstorm_sells_exactly_q_on_memory_and_on_redis_and_counts_the_round_trips(tmp_path: Path) -> None:
    record = run_bench("tapstorm.py", tmp_path / "tapstorm", "--tappers", "10", "--rate", "10", "--watchers", "4",
                       "--quantity", "30", "--limit", "5", "--duration", "2", "--floor", "0.5", "--lead", "0.5",
                       "--procs", "2", "--runs", "1", "--quiet", "0")
    (round_,) = record["results"]
    for side in ("memory", "redis"):
        assert round_[side]["sold"] == 30 and round_[side]["remaining"] == 0
    assert round_["redis"]["nodes"] == 2
    assert round_["redis"]["redis_commands_storm"]["evalsha"] > 0
    assert round_["redis"]["redis_tap_evalsha_per_tap"] is not None
    assert "redis_evalsha_per_tap" not in round_["memory"]

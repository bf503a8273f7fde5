"""The benches' shared definitions (bench/measure.py): percentiles, CPU time and core load from /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from measure import CoreShare, core_jiffies, median, percentile, process_cpu, summary  # noqa: E402


def test_percentile_is_nearest_rank() -> None:
    values = [15, 20, 35, 40, 50]  # the textbook nearest-rank example
    assert percentile(values, 5) == 15
    assert percentile(values, 30) == 20
    assert percentile(values, 40) == 20
    assert percentile(values, 50) == 35
    assert percentile(values, 100) == 50
    assert percentile(values, 0) == 15
    assert percentile(list(range(1, 101)), 99) == 99  # never an interpolation, never past the rank
    assert percentile(list(range(1, 1001)), 99) == 990
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_median_of_runs_is_a_run_that_happened() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.0  # the lower middle, not 2.5
    assert median([None, 5.0, float("nan"), 7.0, 6.0]) == 6.0  # runs without the figure are skipped
    assert median([None]) is None


def test_summary_counts_values_over_a_bound() -> None:
    assert summary([1.0, 25.0, 3.0, 21.0], over=20) == {"count": 4, "p50": 3.0, "p99": 25.0, "max": 25.0,
                                                         "over20": 2}


def test_core_jiffies_counts_busy_fields_only() -> None:
    stat = (
        "cpu  9 9 9 9 9 9 9 9 9 9\n"
        # user nice system idle iowait irq softirq steal guest guest_nice
        "cpu0 100 10 50 800 40 5 3 2 7 1\n"
        "cpu1 1 1 1 1 1 1 1 1 0 0\n"
    )
    busy, total = core_jiffies(0, stat)
    assert busy == 100 + 10 + 50 + 5 + 3 + 2  # guest is inside user already
    assert total == busy + 800 + 40
    with pytest.raises(ValueError):
        core_jiffies(7, stat)


def test_others_on_a_core_is_its_busy_share_minus_the_server() -> None:
    share = CoreShare(seconds=2.0, cpu=0.5, busy=0.75)
    assert share.server == 0.25
    assert share.others == 0.5
    assert CoreShare(seconds=1.0, cpu=1.0, busy=0.9).others == 0.0  # tick rounding never goes negative


def test_process_cpu_reads_a_child_burning_cpu() -> None:
    burn = (
        "import sys, time\n"
        "while time.process_time() < 0.3: pass\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        assert 0.29 <= process_cpu(child.pid) < 2.0
    finally:
        child.kill()
        child.wait()

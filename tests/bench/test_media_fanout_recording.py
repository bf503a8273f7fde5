"""The media fan-out bench's recording comparison: on minus off, from the medians of each side's runs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from media_fanout import Result, recording_cost, table  # noqa: E402


def run(recording: bool, server_cpu: float, baseline_cpu: float, lag_p99_ms: float, k: int) -> Result:
    return Result("fast", 50, recording, server_cpu=server_cpu, baseline_cpu=baseline_cpu, lag_p99_ms=lag_p99_ms,
                  joined=50, delivered_min=1.0, run=k)


def test_recording_cost_is_on_minus_off_of_the_medians() -> None:
    results = [run(False, 10.0, 5.0, 60.0, 1), run(True, 11.5, 6.0, 62.0, 1),
               run(False, 12.0, 5.2, 64.0, 2), run(True, 12.5, 6.4, 61.0, 2),
               run(False, 11.0, 5.1, 63.0, 3), run(True, 30.0, 6.2, 90.0, 3)]  # one noisy run: medians
    [line] = recording_cost(results).splitlines()
    assert line.startswith("- fast, N = 50 (3 runs on, 3 off): recording costs 1.10 % of a core for the room alone")
    assert "1.50 % with 50 viewers" in line
    assert "p99 62.0 ms on / 63.0 ms off (-1.0 ms)" in line
    assert "| fast | on | 50 | median |" in table(results) and "| fast | off | 50 | 1 |" in table(results)


def test_no_comparison_without_both_sides() -> None:
    assert recording_cost([run(True, 11.5, 6.0, 62.0, 1)]) == ""
    assert recording_cost([run(False, 11.5, 6.0, 62.0, 1)]) == ""

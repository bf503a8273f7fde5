"""bench/RESULTS.md holds the benches' generated output verbatim (bench/report.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_report(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / "report.py"), *argv], capture_output=True, text=True)


def test_committed_results_match_the_generated_files() -> None:
    result = run_report("--check")
    assert result.returncode == 0, result.stderr


def test_a_hand_edited_figure_is_caught_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.md").write_text("| p99 ms |\n|---|\n| 20.0 |\n")
    results = tmp_path / "RESULTS.md"
    results.write_text("prose\n<!-- generated: results/x.md -->\n| p99 ms |\n|---|\n| 19.0 |\n"
                       "<!-- end generated -->\nmore prose\n")
    check = run_report("--check", "--results", str(results))
    assert check.returncode == 1 and "results/x.md: differs" in check.stderr
    assert run_report("--results", str(results)).returncode == 0
    assert "| 20.0 |" in results.read_text() and "| 19.0 |" not in results.read_text()
    assert results.read_text().startswith("prose\n") and results.read_text().endswith("more prose\n")
    assert run_report("--check", "--results", str(results)).returncode == 0


def test_a_section_naming_a_missing_file_fails(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("<!-- generated: results/gone.md -->\n| 1 |\n<!-- end generated -->\n")
    assert run_report("--check", "--results", str(results)).returncode == 1
    assert run_report("--results", str(results)).returncode == 1

"""Splice the benches' generated markdown into bench/RESULTS.md, so no figure there is typed by hand.

RESULTS.md marks each generated section with a pair of comments naming the file a bench wrote
(bench/measure.py ``write_results``)::

    <!-- generated: results/fanout.md -->
    ... replaced by the file's content ...
    <!-- end generated -->

``python bench/report.py`` rewrites every marked section from its file; ``--check`` changes
nothing and fails (exit 1) when a section differs from its file or names a missing file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = re.compile(r"(<!-- generated: (?P<name>\S+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def splice(text: str, base: Path) -> tuple[str, list[str]]:
    """``text`` with every marked section replaced by its file (relative to ``base``); the problems found."""
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        source = base / match.group("name")
        if not source.is_file():
            problems.append(f"{match.group('name')}: no such file")
            return match.group(0)
        body = source.read_text()
        if match.group("body") != body:
            problems.append(f"{match.group('name')}: differs from RESULTS.md")
        return match.group(1) + body + match.group(4)

    return SECTION.sub(replace, text), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only report sections that are out of date")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    text = args.results.read_text()
    spliced, problems = splice(text, args.results.parent)
    if args.check:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    missing = [p for p in problems if p.endswith("no such file")]
    for problem in missing:
        print(problem, file=sys.stderr)
    args.results.write_text(spliced)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

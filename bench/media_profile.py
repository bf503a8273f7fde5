"""Summarise a py-spy ``--format raw`` profile of the relay: where its one core goes.

``media_fanout.py --py-spy DIR`` records one profile per steady window; this
prints the functions with the most samples on the stack (inclusive) and at
the top of it (self), as shares of all samples, so a bench result can say
what limits the relay with numbers rather than a flame graph.

    python bench/media_profile.py bench/out/pyspy/py-spy-stock-60.txt --top 25
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \((.*?):\d+\)$")


def frames(stack: str) -> list[str]:
    """'func (file:line)' entries -> 'func (file)', line numbers dropped so a function counts once."""
    out = []
    for entry in stack.split(";"):
        match = _FRAME.match(entry)
        out.append(f"{match.group(1)} ({match.group(2)})" if match else entry)
    return out


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        stack, count = frames(match.group(1)), int(match.group(2))
        total += count
        own[stack[-1]] += count
        for name in set(stack):
            inclusive[name] += count
    return total, inclusive, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, inclusive, own = summarise(args.profile)
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        for name, count in counter.most_common(args.top):
            print(f"  {100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()

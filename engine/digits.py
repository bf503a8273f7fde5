"""Non-negative integers from client text: ASCII digits of bounded length, nothing else.

``str.isdigit`` accepts Unicode digits such as ``²`` that ``int`` then rejects, and ``int`` of a
string of thousands of digits raises; every number a client sends as text (query parameters,
resume positions, log ids) goes through ``parse_uint`` instead.
"""

from __future__ import annotations


def parse_uint(raw: object, max_digits: int = 20) -> int | None:
    """``raw`` as an int when it is 1 to ``max_digits`` ASCII digits, else None."""
    if not isinstance(raw, str) or not 0 < len(raw) <= max_digits or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)

"""Rewrites of real offers for attack tests: candidate lists of any size, naming any loopback port."""

from __future__ import annotations

import re


def candidates(count: int, port: int = 40000, host: str = "127.0.0.1") -> list[str]:
    """``count`` distinct host candidates (foundation and priority differ) on ``host``, from ``port`` on."""
    return [f"a=candidate:{i} 1 udp {2130706431 - i} {host} {port + i % 20000} typ host" for i in range(count)]


def same_port_candidates(count: int, port: int, host: str = "127.0.0.1") -> list[str]:
    """``count`` distinct candidates that all name one address and port."""
    return [f"a=candidate:{i} 1 udp {2130706431 - i} {host} {port} typ host" for i in range(count)]


def with_candidates(sdp: str, lines: list[str], end: bool = True) -> str:
    """``sdp`` with its candidates replaced by ``lines`` in the first section (and end-of-candidates if ``end``)."""
    sdp = re.sub(r"^a=(candidate:[^\r]*|end-of-candidates)\r\n", "", sdp, flags=re.M)
    extra = "".join(line + "\r\n" for line in lines) + ("a=end-of-candidates\r\n" if end else "")
    return re.sub(r"(^a=mid:[^\r]*\r\n)", lambda m: m.group(1) + extra, sdp, count=1, flags=re.M)


def mids(sdp: str) -> list[str]:
    return re.findall(r"^a=mid:(\S+)", sdp, re.M)

"""The Host header a browser sent, checked before it is copied into a page.

The pages embed a websocket URL built from the host the browser used (signaling.pages). The header
is the client's to write, so it is taken only when it is a DNS hostname, an IPv4 literal or a
bracketed IPv6 literal, with an optional port in 1-65535; anything else (spaces, ``@``, ``/``,
percent signs, non-ASCII, a second port) is not a host and the page falls back to the
configured URLs.
"""

from __future__ import annotations

import ipaddress
import re

MAX_HOST = 253  # a DNS name's longest text form
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


def host_of(header: str | None) -> str | None:
    """The host part of a valid Host header (an IPv6 literal without brackets), else None."""
    if not header or len(header) > MAX_HOST + 8:
        return None
    if header.startswith("["):
        end = header.find("]")
        host, rest = header[1:end], header[end + 1:]
        if end < 0 or not _ipv6(host):
            return None
    else:
        host, colon, port = header.partition(":")
        rest = colon + port
        if not _name(host):
            return None
    if rest:
        port = rest[1:]
        if rest[0] != ":" or not _PORT.fullmatch(port) or not 0 < int(port) <= 65535:
            return None
    return host


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return "%" not in text  # a zone id is local to the client's machine


def _name(text: str) -> bool:
    """A DNS hostname, or an IPv4 literal when it is all digits and dots."""
    if not 0 < len(text) <= MAX_HOST:
        return False
    labels = text.split(".")
    if all(label.isdigit() for label in labels if label):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return False
        return True
    return all(_LABEL.fullmatch(label) for label in labels)

r"""Screening of SDP offers and trickled ICE candidates before aiortc sees them.

The media surface is anonymous (any viewer may POST an offer), so what an
offer can make the node do must be bounded before a peer connection exists:

- Size: an offer or trickle fragment longer than ``max_sdp_bytes`` is refused.
- Candidate count: aioice pairs every remote candidate with every local one
  and re-sorts its whole check list on each addition, so thousands of
  candidates hold the event loop for seconds to minutes. A browser sends
  fewer than 20; a session may send ``max_remote_candidates`` in all (offer
  and trickle together), and an offer or fragment past it is refused whole.
- Reflection: every remote candidate is an address the node sends STUN
  checks to. ``CandidateFilter`` lets an operator refuse ranges (loopback and
  private ranges on a public node); refused candidates are dropped as a
  firewall would drop them, so the node never sends a packet there.
- Lines: aiortc splits SDP with ``str.splitlines``, which also breaks lines
  on a bare ``\r``, ``\v``, ``\f``, ``\x1c``-``\x1e``, ``\x85``, ``\u2028`` and
  ``\u2029``. A line boundary the screen did not see would smuggle lines
  (candidates, mids, media sections) past every check here, so text holding
  any line boundary other than ``\n`` or ``\r\n`` is refused whole.
- Media sections: a browser sends a handful; each one costs parsing,
  transceivers and BUNDLE bookkeeping, so an offer may hold ``max_sections``.
- Structure: a few malformed lines make aiortc fail with AssertionError or
  ValueError deep inside ``setRemoteDescription``; they are refused here
  with a message naming the line. Numbers are ASCII digits only: ``str.isdigit``
  accepts ``²``, which ``int`` refuses, and regex ``\d`` and ``int`` read
  other scripts' digits, which aiortc's other checks do not expect.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from engine.digits import parse_uint
from engine.errors import shown
from engine.media.errors import MediaError

#: Named ranges accepted by ``CandidateFilter.parse`` besides plain CIDRs.
RANGES: dict[str, tuple[str, ...]] = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
    "unspecified": ("0.0.0.0/8", "::/128"),
}
#: Keyword for every address that is not globally routable (``ipaddress``'s ``is_global``).
NON_GLOBAL = "non-global"

_CANDIDATE = re.compile(
    r"^(\S+) (\d{1,3}) (\S+) (\d{1,10}) (\S+) (\d{1,5}) typ (\S+)((?: \S+ \S+)*)\s*$", re.ASCII
)
_CONNECTION = re.compile(r"^c=IN IP[46] \S+$", re.ASCII)
_MEDIA = re.compile(r"^m=(\S+) \d{1,5} [A-Z/]+ (\S.*)$", re.ASCII)
#: Candidates are printable ASCII: aiortc splits them on any whitespace (``\x1c``-``\x1f`` and
#: Unicode spaces included), the screen on spaces; refusing the rest makes both read the same words.
_PRINTABLE = re.compile(r"[ -~]*\Z")
#: Line boundaries of ``str.splitlines`` besides ``\n`` (a ``\r`` directly before ``\n`` is removed first).
_OTHER_LINE_BREAK = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
#: Payload types that collide with RTCP packet types (RFC 5761), refused as aiortc does.
_RTCP_CONFLICT = range(72, 77)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CandidateFilter:
    """Remote candidate addresses the node refuses to contact.

    Empty (the default) refuses nothing. Once any range is set, candidates
    naming a host name instead of an address (mDNS ``.local`` names) are
    refused too: where they point is unknown until resolved.
    """

    networks: tuple[Network, ...] = ()
    non_global: bool = False

    @classmethod
    def parse(cls, spec: str) -> CandidateFilter:
        """From ``"loopback,private,203.0.113.0/24"``; ValueError names an unknown item."""
        networks: list[Network] = []
        non_global = False
        for item in (part.strip().lower() for part in spec.split(",")):
            if not item:
                continue
            if item == NON_GLOBAL:
                non_global = True
            elif item in RANGES:
                networks += [ipaddress.ip_network(cidr) for cidr in RANGES[item]]
            else:
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    names = ", ".join([*RANGES, NON_GLOBAL])
                    message = f"ICE candidate filter item {item!r} is neither a CIDR nor one of {names}"
                    raise ValueError(message) from None
        return cls(tuple(networks), non_global)

    @property
    def active(self) -> bool:
        return bool(self.networks) or self.non_global

    def allows(self, host: str) -> bool:
        """Whether the node may send to a candidate at ``host``."""
        if not self.active:
            return True
        try:
            address: Address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a host name: unknown destination
        if self.non_global and not address.is_global:
            return False
        return not any(address in network for network in self.networks)


@dataclass(frozen=True)
class SdpLimits:
    """What one media session may send: bytes per offer or fragment, candidates in all, media sections
    per offer, which addresses."""

    max_bytes: int = 32 * 1024
    max_candidates: int = 32
    max_sections: int = 16
    candidate_filter: CandidateFilter = field(default_factory=CandidateFilter)


def check_size(text: str, limits: SdpLimits, what: str) -> None:
    """413 when ``text`` is longer than the limit (in UTF-8 bytes, as the HTTP body limit counts)."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > limits.max_bytes:
        raise MediaError(413, "too_large", f"{what} is {size} bytes; the limit is {limits.max_bytes}")


def check_lines(text: str, what: str) -> str:
    r"""``text`` with ``\r\n`` turned into ``\n``; 400 if it holds any other line boundary.

    The screen and aiortc (``str.splitlines``) must see the same lines.
    """
    text = text.replace("\r\n", "\n")
    found = _OTHER_LINE_BREAK.search(text)
    if found is not None:
        raise MediaError(
            400,
            "bad_request",
            f"{what} holds the line break {found.group()!r} at character {found.start()}; "
            "lines must end in \\r\\n or \\n",
        )
    return text


def check_candidate(text: str) -> RTCIceCandidate:
    """An ``a=candidate`` value (without ``a=candidate:``) read; 400 naming what is wrong."""
    unreadable = MediaError(
        400,
        "bad_request",
        f"unreadable ICE candidate {shown(text)}: expected 'foundation component transport priority "
        "address port typ type [name value]...'",
    )
    match = _CANDIDATE.match(text) if _PRINTABLE.match(text) else None
    if match is None:
        raise unreadable
    extras = match.group(8).split(" ")[1:]
    pairs = zip(extras[::2], extras[1::2], strict=True)
    if any(name == "rport" and parse_uint(value, 5) is None for name, value in pairs):
        raise unreadable  # ``int`` also reads "-1", "1_0" and non-ASCII digits
    try:
        candidate = candidate_from_sdp(text)
    except ValueError:  # a non-numeric rport
        raise unreadable from None
    if candidate.port > 65535:
        raise MediaError(400, "bad_request", f"ICE candidate port {candidate.port} is out of range")
    return candidate


@dataclass(frozen=True)
class Screened:
    """An offer after screening: its text without refused candidates, and how many candidates it carried."""

    text: str
    received: int  # candidate lines received, refused ones included


def screen_candidates(lines: list[str], limits: SdpLimits, already: int, status: int) -> tuple[list[str], int]:
    """Check candidate lines (``a=candidate:...``) against the session's budget and the filter.

    ``already`` is how many the session sent before; past ``max_candidates``
    the whole batch is refused with ``status``. Returns the kept values
    (``candidate:...``) and how many lines were received.
    """
    if already + len(lines) > limits.max_candidates:
        raise MediaError(
            status,
            "too_many_candidates",
            f"{already + len(lines)} ICE candidates for one session; the limit is {limits.max_candidates}",
        )
    kept = []
    for line in lines:
        value = line.removeprefix("a=")
        candidate = check_candidate(value.removeprefix("candidate:"))
        # port 0 (some clients' active TCP candidates) names nothing to send to
        if candidate.port and limits.candidate_filter.allows(candidate.ip):
            kept.append(value)
    return kept, len(lines)


def _check_media_line(line: str) -> None:
    match = _MEDIA.match(line)
    if match is None:
        raise MediaError(
            400, "bad_request", f"malformed media line {shown(line)}: expected 'm=KIND PORT PROTO FORMAT...'"
        )
    if match.group(1) not in ("audio", "video"):
        return
    for fmt in match.group(2).split():
        payload_type = parse_uint(fmt, 3)
        if payload_type is None or payload_type > 127 or payload_type in _RTCP_CONFLICT:
            raise MediaError(
                400, "bad_request", f"media line {shown(line)} names {shown(fmt)}, which is not an RTP payload type"
            )


def _sections(lines: list[str]) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


def screen_offer(text: str, limits: SdpLimits) -> Screened:
    """Check an SDP offer's size, lines, sections, mids and candidates; drop candidates the filter refuses.

    Raises ``MediaError`` (413 or 400) with a message naming the fault. Every
    check is linear in the offer's length.
    """
    check_size(text, limits, "SDP offer")
    lines = check_lines(text, "SDP offer").split("\n")
    sections = 0
    for line in lines:
        if line.startswith("c=") and not _CONNECTION.match(line.rstrip()):
            raise MediaError(
                400, "bad_request", f"malformed connection line {shown(line)}: expected 'c=IN IP4 ADDRESS'"
            )
        if line.startswith("m="):
            sections += 1
            if sections > limits.max_sections:
                raise MediaError(
                    400, "bad_request", f"SDP offer has more than {limits.max_sections} media sections (m= lines)"
                )
            _check_media_line(line.rstrip())
    mids: set[str] = set()
    for section in _sections(lines):
        found = [line[6:].strip() for line in section if line.rstrip() == "a=mid" or line.startswith("a=mid:")]
        kind = section[0].split()[0][2:]
        if len(found) != 1:
            raise MediaError(400, "bad_request", f"the {kind} section needs exactly one a=mid (it has {len(found)})")
        if not found[0]:
            raise MediaError(400, "bad_request", f"the {kind} section's a=mid has no value")
        if found[0] in mids:
            raise MediaError(400, "bad_request", f"a=mid {shown(found[0])} names two media sections")
        mids.add(found[0])
    for line in lines:
        if line.startswith("a=group:BUNDLE"):
            absent = next((mid for mid in line.split()[1:] if mid not in mids), None)
            if absent is not None:
                raise MediaError(400, "bad_request", f"a=group:BUNDLE names mid {shown(absent)}, which no section has")
    candidates = [line.rstrip() for line in lines if line.startswith("a=candidate:")]
    kept, received = screen_candidates(candidates, limits, 0, 400)
    if len(kept) == received:
        return Screened(text, received)
    allowed = set(kept)
    lines = [line for line in lines if not line.startswith("a=candidate:") or line.rstrip()[2:] in allowed]
    return Screened("\r\n".join(lines), received)

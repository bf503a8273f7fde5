"""The candidate filter and candidate screening on their own (no network)."""

from __future__ import annotations

import pytest

from engine.media.errors import MediaError
from engine.media.sdpguard import CandidateFilter, SdpLimits, screen_candidates


def test_candidate_filter_ranges():
    public = CandidateFilter.parse("loopback, private,link-local,203.0.113.0/24")
    refused = ["127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd00::1",
               "169.254.1.1", "fe80::1", "203.0.113.7", "host.local"]
    assert not any(public.allows(host) for host in refused)
    assert all(public.allows(host) for host in ("8.8.8.8", "2001:4860::8888", "198.51.100.1"))
    non_global = CandidateFilter.parse("non-global")
    assert not non_global.allows("10.0.0.1") and not non_global.allows("0.0.0.0") and non_global.allows("1.1.1.1")
    anything = CandidateFilter.parse("")
    assert not anything.active and anything.allows("127.0.0.1") and anything.allows("host.local")
    with pytest.raises(ValueError, match="'intranet'"):
        CandidateFilter.parse("loopback,intranet")


def test_screening_keeps_what_may_be_contacted_and_counts_everything():
    limits = SdpLimits(max_candidates=4, candidate_filter=CandidateFilter.parse("private"))
    lines = [
        "a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0 network-cost 999",
        "a=candidate:2 1 udp 1686052607 198.51.100.4 61000 typ srflx raddr 192.168.1.5 rport 54321",
        "candidate:3 1 tcp 1518280447 198.51.100.4 0 typ host tcptype active",
    ]
    kept, received = screen_candidates(lines, limits, already=0, status=422)
    assert kept == [lines[1][2:]] and received == 3
    with pytest.raises(MediaError) as refused:
        screen_candidates(lines, limits, already=2, status=422)
    assert (refused.value.status, refused.value.code) == (422, "too_many_candidates")
    for broken in ("candidate:1 1 udp 5 10.0.0.1 5000 typ", "candidate:1 1 udp 5 10.0.0.1 70000 typ host",
                   "candidate:1 1 udp 5 10.0.0.1 5000 typ host raddr 1 rport x", "candidate:x"):
        with pytest.raises(MediaError) as unreadable:
            screen_candidates([broken], limits, already=0, status=422)
        assert unreadable.value.status == 400 and "candidate" in unreadable.value.message

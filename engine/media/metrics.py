"""Prometheus metrics of the media relay (default registry, labelled by room).

Kept in one module so the names stay stable and documented in one place
(docs/OPERATIONS.md, "Media relay").
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import Counter, Gauge, Histogram

PUBLISHERS = Gauge("livecart_media_publishers", "Publishers connected", ["room"])
VIEWERS = Gauge("livecart_media_viewers", "Viewers connected", ["room"])
PACKETS_IN = Counter("livecart_media_frames_in", "Encoded frames received from publishers", ["room", "kind"])
BYTES_IN = Counter("livecart_media_bytes_in", "Encoded bytes received from publishers", ["room", "kind"])
PACKETS_OUT = Counter(
    "livecart_media_frames_out", "Encoded frames handed to viewer senders", ["room", "kind"]
)
BYTES_OUT = Counter("livecart_media_bytes_out", "Encoded bytes handed to viewer senders", ["room", "kind"])
KEYFRAME_REQUESTS = Counter(
    "livecart_media_keyframe_requests", "PLIs sent upstream to publishers (after rate limiting)", ["room"]
)
NACKS = Counter(
    "livecart_media_nacks", "Packets NACKed by viewers and looked up for retransmission", ["room"]
)
RETRANSMITS = Counter(
    "livecart_media_retransmits", "Packets re-sent to viewers from the room's history (fast path)", ["room"]
)
RETRANSMITS_REFUSED = Counter(
    "livecart_media_retransmits_refused",
    "NACKed packets not re-sent: past a viewer's retransmission budget (--rtx-rate, --rtx-per-packet)",
)
VIEWER_LOSS = Histogram(
    "livecart_media_viewer_fraction_lost",
    "Fraction of packets lost that viewers report in RTCP receiver reports (fast path)",
    ["room"],
    buckets=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
VIEWER_RTT = Histogram(
    "livecart_media_viewer_rtt_seconds",
    "Round-trip time to viewers from RTCP receiver reports (fast path)",
    ["room"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0),
)
DROPPED = Counter(
    "livecart_media_frames_dropped", "Frames dropped for viewers that fell behind", ["room", "kind"]
)
FIRST_FRAME = Histogram(
    "livecart_media_join_to_first_frame_seconds",
    "Time from a viewer's offer to its first video frame handed to its sender",
    ["room"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0),
)
EDGE_PULL = Gauge(
    "livecart_media_edge_pull",
    "1 while this node pulls the room from node `upstream` (it is the room's edge), labelled with the pull's "
    "state: requesting, connecting, connected or live",
    ["room", "upstream", "state"],
)
EDGE_PULLS_OPENED = Counter(
    "livecart_media_edge_pulls_opened", "Pulls of the room this node opened to an upstream node", ["room"]
)
EDGES_SERVED = Gauge(
    "livecart_media_edges_served", "Edge nodes pulling the room from this node (it is the room's origin)", ["room"]
)


def edge_pull_state(room: str, upstream: str, old: str, new: str) -> None:
    """Move a pull's series from state ``old`` to ``new`` (``closed``: no series)."""
    if old != new:
        with suppress(KeyError):
            EDGE_PULL.remove(room, upstream, old)
    if new != "closed":
        EDGE_PULL.labels(room, upstream, new).set(1)


def forget(room: str) -> None:
    """Drop a room's series once it has no media, so metrics stay bounded."""
    for metric in (PUBLISHERS, VIEWERS, KEYFRAME_REQUESTS, NACKS, FIRST_FRAME, RETRANSMITS, VIEWER_LOSS, VIEWER_RTT,
                   EDGE_PULLS_OPENED, EDGES_SERVED):
        with suppress(KeyError):
            metric.remove(room)
    for metric in (PACKETS_IN, BYTES_IN, PACKETS_OUT, BYTES_OUT, DROPPED):
        for kind in ("audio", "video"):
            with suppress(KeyError):
                metric.remove(room, kind)

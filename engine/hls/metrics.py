"""Prometheus metrics of live HLS: requests, blocking waits, parts made, how far parts trail the live frames."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("livecart_hls_requests_total", "HLS requests answered, by what was asked and the status",
                   ["kind", "status"])
BLOCKED = Gauge("livecart_hls_blocked_requests", "HLS requests waiting now (blocking reloads, preload hints)")
BLOCK_WAIT = Histogram(
    "livecart_hls_block_wait_seconds", "How long a blocking HLS request waited, by what it asked for",
    ["kind"], buckets=(0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0))
PARTS = Counter("livecart_hls_parts_total", "Parts made by the live HLS segmenter (rate(): parts per second)",
                ["room"])
SEGMENTER_LAG = Histogram(
    "livecart_hls_segmenter_lag_seconds",
    "From the end of a part's last frame (its wall-clock media time) to the part being ready", ["room"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0))
LIVE_ROOMS = Gauge("livecart_hls_live_rooms", "Rooms whose live HLS segmenter runs on this node")


def forget(room: str) -> None:
    """Drop a room's series once its stream stops, so the metrics of a long-running node stay bounded."""
    for metric in (PARTS, SEGMENTER_LAG):
        with contextlib.suppress(KeyError):  # a stream that stopped before its first part
            metric.remove(room)

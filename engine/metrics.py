"""Prometheus metrics of the engine core (rooms, connections, events, rejections).

Module-level collectors on the default registry, so every part of the process shows up
on one ``/metrics`` page; feature packages (media, commerce) keep their own modules.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

ROOMS = Gauge("livecart_rooms", "Rooms known to this process")
CONNECTIONS = Gauge("livecart_connections", "Open websocket connections", ["role"])
EVENTS_PUBLISHED = Counter("livecart_events_published_total", "Room events published (seq assigned)")
EVENTS_DELIVERED = Counter("livecart_events_delivered_total", "Room event frames written to connections")
DELIVERY_LATENCY = Histogram(
    "livecart_event_delivery_seconds",
    "Publish to write on the last connection of the room, per event",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
SEND_QUEUE = Counter(
    "livecart_send_queue_total",
    "Slow-connection handling: 'lagged' (events skipped), 'resynced' (snapshot sent), 'closed'",
    ["outcome"],
)
BUS_TICK = Gauge("livecart_bus_tick_seconds",
                 "Current state-event coalescing interval (stretched toward --tick-max-ms while the loop is loaded)")


class _Rejections:
    """Client messages answered with an error, by code: a plain dict the event loop's thread alone
    writes, read when the metrics page is scraped. A flash sale answers tens of thousands of
    ``sold_out`` a second, and a prometheus Counter takes a lock on every increment."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("livecart_rejected_messages", "Client messages answered with an error",
                                     labels=["code"])
        for code, count in list(self.counts.items()):
            family.add_metric([code], count)
        yield family


REJECTED = _Rejections()
REGISTRY.register(REJECTED)


def rejected(code: str) -> None:
    """Count one message answered with error ``code`` (codes are the server's own: a bounded set)."""
    REJECTED.counts[code] += 1

REFUSED_CONNECTIONS = Counter(
    "livecart_refused_connections_total",
    "Connections refused or cut before a request: 'per_ip' (address over its cap), 'header_timeout' (too slow)",
    ["port", "reason"],
)

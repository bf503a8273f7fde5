"""Prometheus metrics of the commerce domain's loading: what an operator must look at after a start."""

from __future__ import annotations

from prometheus_client import Gauge

UNLOADED_ROOMS = Gauge(
    "livecart_commerce_unloaded_rooms",
    "Rooms whose shop could not be loaded from the records (their commerce calls answer unavailable)",
)
OVERSOLD_POOLS = Gauge(
    "livecart_commerce_oversold_pools",
    "Stock pools whose orders hold more units than the pool offers; each is served sold out",
)

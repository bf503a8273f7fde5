"""The engine's configuration: one frozen dataclass built from flags and environment.

Every limit the engine enforces lives here so that operators can find, document and tune
them in one place (DESIGN.md, "Bounded everything"). Flags win over ``LIVECART_*``
environment variables, which win over the defaults below.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Config:
    """All settings of one engine process. Field docs double as ``--help`` text."""

    host: str = field(default="127.0.0.1", metadata={"help": "bind address for HTTP and websocket"})
    http_port: int = field(default=8080, metadata={"help": "HTTP port (REST API, WHIP/WHEP, pages)"})
    ws_port: int = field(default=8081, metadata={"help": "websocket port (path /ws)"})
    public_url: str = field(default="", metadata={"help": "base URL printed in links (default from host)"})
    data_dir: str = field(default="./livecart-data", metadata={"help": "SQLite data directory"})
    secret: str = field(default="", metadata={"help": "token signing secret (default: kept in data dir)"})
    admin_key: str = field(default="", metadata={"help": "admin API key (default: kept in data dir)"})
    demo_room: str = field(default="demo", metadata={"help": "room created on start ('' for none)"})
    demo_catalog: bool = field(default=True, metadata={"help": "put sample products in a new demo room"})
    guest_tokens: bool = field(default=True, metadata={"help": "let the watch page mint viewer tokens"})
    token_ttl: int = field(default=86400, metadata={"help": "default token lifetime, seconds"})

    tick_ms: int = field(default=50, metadata={"help": "state-event coalescing tick, ms"})
    history_size: int = field(default=1024, metadata={"help": "events kept per room for resume"})
    history_age: float = field(default=300.0, metadata={"help": "max age of replayable events, s"})
    fanout_slice: int = field(default=128, metadata={"help": "connections written between clock checks"})
    fanout_budget_ms: float = field(default=8.0, metadata={"help": "loop time one broadcast holds before yielding"})
    send_queue_bytes: int = field(default=1 << 20, metadata={"help": "per-connection send buffer limit"})
    slow_close_after: float = field(default=10.0, metadata={"help": "close a lagging client after, s"})
    max_frame: int = field(default=64 * 1024, metadata={"help": "largest websocket frame accepted"})
    max_connections: int = field(default=20000, metadata={"help": "websocket connections per process"})
    msg_rate: float = field(default=50.0, metadata={"help": "client messages per second per connection"})
    msg_burst: int = field(default=100, metadata={"help": "client message burst per connection"})
    chat_max_len: int = field(default=500, metadata={"help": "longest chat message, characters"})
    chat_rate: float = field(default=1.0, metadata={"help": "chat messages per second per connection"})
    chat_burst: int = field(default=5, metadata={"help": "chat burst per connection"})
    permessage_deflate: bool = field(default=False, metadata={"help": "offer websocket compression"})
    ice_servers: str = field(default="", metadata={"help": "comma-separated STUN/TURN URLs (none by default)"})
    announce: str = field(default="", metadata={"help": "comma-separated addresses announced as ICE candidates"})
    media_listen: str = field(default="0.0.0.0", metadata={"help": "UDP bind address for announced foreign IPs"})
    media_rcvbuf: int = field(default=4 << 20, metadata={"help": "UDP receive buffer per peer, bytes"})
    max_viewers_per_room: int = field(default=500, metadata={"help": "media viewers per room (then 503)"})
    max_peers: int = field(default=2000, metadata={"help": "media peer connections per process (then 503)"})
    pli_interval: float = field(default=1.0, metadata={"help": "min seconds between keyframe requests"})
    publisher_idle: float = field(default=3.0, metadata={
        "help": "seconds without media before a room shows offline and a new WHIP POST with its key takes over"})
    forwarding: str = field(default="fast", metadata={"help": "media forwarding path: fast or stock (aiortc senders)"})
    shutdown_grace: float = field(default=3.0, metadata={"help": "seconds to close clients on stop"})
    hold_seconds: float = field(default=600.0, metadata={"help": "how long a tap holds units in a cart, s"})
    tap_rate: float = field(default=5.0, metadata={"help": "taps, uncarts and checkouts per second per connection"})
    tap_burst: int = field(default=10, metadata={"help": "tap burst per connection"})
    max_tap_qty: int = field(default=20, metadata={"help": "largest quantity one tap may reserve"})
    max_products: int = field(default=500, metadata={"help": "products in one room's catalog"})
    max_tags: int = field(default=8, metadata={"help": "product tags pinned at once per room"})
    max_sales: int = field(default=100, metadata={"help": "flash sales kept per room"})
    auto_confirm: bool = field(default=False, metadata={"help": "mark orders paid when placed (demos, no payment)"})
    purchase_log_size: int = field(default=1_000_000, metadata={"help": "purchase events kept for readers"})
    fsync_orders: bool = field(default=False, metadata={
        "help": "fsync every order commit: survives power loss, not just a crash (~4 ms each, on the loop)"})
    commerce_tick_ms: int = field(default=200, metadata={"help": "room clock tick: expiry, sale start/end, ms"})
    gc_policy: str = field(default="freeze", metadata={
        "help": "garbage collector policy of livecart serve: freeze (no long pauses with big rooms) or default"})
    gc_thaw_below: int = field(default=0, metadata={
        "help": "freeze policy: thaw and fully collect when at most this many connections (ws + media) are open"})
    gc_young_ms: float = field(default=100.0, metadata={
        "help": "with the freeze policy, collect the youngest generation this often, ms (0: never)"})
    gc_warn_ms: float = field(default=20.0, metadata={"help": "log collections that hold the loop this long, ms"})

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        scheme_host = self.base_url.replace("http://", "ws://").replace("https://", "wss://")
        return scheme_host.rsplit(":", 1)[0] + f":{self.ws_port}/ws"

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (tests and the CLI use it)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Config(**values)


def _parse_value(kind: type, raw: str) -> Any:
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Expose every Config field as ``--kebab-name`` with its env variable named in the help."""
    for f in fields(Config):
        kind = _TYPES[str(f.type)]
        flag = "--" + f.name.replace("_", "-")
        env = "LIVECART_" + f.name.upper()
        help_text = f"{f.metadata.get('help', '')} (env {env}, default {f.default!r})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=kind, help=help_text)


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Build the Config: flag, else environment variable, else default."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Config):
        kind = _TYPES[str(f.type)]
        flag_value = getattr(args, f.name, None)
        env_value = env.get("LIVECART_" + f.name.upper())
        if flag_value is not None:
            values[f.name] = flag_value
        elif env_value is not None:
            values[f.name] = _parse_value(kind, env_value)
    return Config(**values)

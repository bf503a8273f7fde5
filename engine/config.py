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
    public_url: str = field(default="", metadata={
        "help": "base URL people reach the HTTP side at, for links and pages (default from host and port)"})
    data_dir: str = field(default="./livecart-data", metadata={"help": "SQLite data directory"})
    redis_url: str = field(default="", metadata={
        "help": "Redis for shared state, redis://[:PASSWORD@]HOST:PORT/DB or rediss:// for TLS (stock and carts, "
                "rooms, the secret, catalogs, sales, orders, the purchase log); '' keeps everything in this process"})
    redis_prefix: str = field(default="livecart:", metadata={"help": "prefix of every Redis key this engine writes"})
    redis_timeout: float = field(default=1.0, metadata={
        "help": "seconds a Redis call may take (connect, or wait for a reply or a free connection); then the "
                "action answers unavailable"})
    redis_connections: int = field(default=64, metadata={
        "help": "Redis connections per process, at most (besides the --redis-pipelines ones)"})
    redis_batch: int = field(default=100, metadata={
        "help": "commands one Redis pipeline carries at most: the stock scripts, event publishes and direct "
                "messages called during one turn of the event loop go out together"})
    redis_pipelines: int = field(default=1, metadata={
        "help": "connections of their own the pipelined Redis calls use, per client (stock, events): many "
                "pipelines travel on each at once"})
    redis_direct_queue: int = field(default=10000, metadata={
        "help": "direct messages for users' connections on other nodes waiting to go to Redis, at most "
                "(more are dropped and counted)"})
    purchase_group: str = field(default="services", metadata={
        "help": "consumer group created on the purchase stream for other services (with --redis-url)"})
    node_id: str = field(default="", metadata={
        "help": "this node's id in the node registry and on its leases (default: host name and a random suffix)"})
    node_heartbeat: float = field(default=1.0, metadata={"help": "seconds between this node's registry heartbeats"})
    node_ttl: float = field(default=5.0, metadata={
        "help": "seconds a node stays listed (and keeps its publisher claims) after its last heartbeat"})
    viewers_interval: float = field(default=0.5, metadata={
        "help": "with --redis-url: seconds between reads of the viewer counts (every node's) of the rooms whose "
                "clock this node runs, which it publishes"})
    lease_ttl: float = field(default=3.0, metadata={
        "help": "seconds a room's clock lease outlives its holder's last renewal (renewed every third of it): "
                "how soon another node takes a dead node's rooms over"})
    secret: str = field(default="", metadata={"help": "token signing secret (default: kept in data dir)"})
    admin_key: str = field(default="", metadata={"help": "admin API key (default: kept in data dir)"})
    demo_room: str = field(default="demo", metadata={"help": "room created on start ('' for none)"})
    demo_catalog: bool = field(default=True, metadata={"help": "put sample products in a new demo room"})
    guest_tokens: bool = field(default=True, metadata={"help": "let the watch page mint viewer tokens"})
    token_ttl: int = field(default=86400, metadata={"help": "default token lifetime, seconds"})

    tick_ms: int = field(default=50, metadata={"help": "state-event coalescing tick while the loop is quiet, ms"})
    tick_max_ms: int = field(default=250, metadata={
        "help": "longest the coalescing tick stretches while the event loop is loaded, ms (= --tick-ms: never)"})
    history_size: int = field(default=1024, metadata={"help": "events kept per room for resume"})
    history_age: float = field(default=300.0, metadata={"help": "max age of replayable events, s"})
    fanout_slice: int = field(default=128, metadata={"help": "connections written between clock checks"})
    fanout_budget_ms: float = field(default=8.0, metadata={"help": "loop time one broadcast holds before yielding"})
    send_queue_bytes: int = field(default=1 << 20, metadata={"help": "per-connection send buffer limit"})
    slow_close_after: float = field(default=10.0, metadata={"help": "close a lagging client after, s"})
    max_frame: int = field(default=64 * 1024, metadata={"help": "largest websocket frame accepted"})
    max_connections: int = field(default=20000, metadata={"help": "websocket connections per process"})
    msg_rate: float = field(default=50.0, metadata={"help": "client messages per second per user"})
    msg_burst: int = field(default=100, metadata={"help": "client message burst per user"})
    chat_max_len: int = field(default=500, metadata={"help": "longest chat message, characters"})
    chat_rate: float = field(default=1.0, metadata={"help": "chat messages per second per user"})
    chat_burst: int = field(default=5, metadata={"help": "chat burst per user"})
    max_ws_per_ip: int = field(default=200, metadata={
        "help": "websocket connections per client address (more are answered 429 and closed)"})
    max_connections_per_user: int = field(default=10, metadata={
        "help": "websocket connections per user (token sub); more are refused with close 4429"})
    max_http_per_ip: int = field(default=64, metadata={
        "help": "concurrent HTTP connections per client address (more are answered 429 and closed)"})
    http_read_timeout: float = field(default=10.0, metadata={
        "help": "seconds a client has to send its first request's headers, and any request's body (then 408)"})
    ws_handshake_timeout: float = field(default=10.0, metadata={
        "help": "seconds a client has to complete the websocket handshake (then closed)"})
    ws_ping_interval: float = field(default=20.0, metadata={
        "help": "seconds between websocket keepalive pings; a client silent for a whole interval is cut"})
    ws_inbox_bytes: int = field(default=256 * 1024, metadata={
        "help": "bytes of client messages held while a connection waits for an answer (more: reading pauses)"})
    ws_inbox: int = field(default=256, metadata={
        "help": "client messages held while a connection waits for an answer (more: closed 4429)"})
    guest_rate: float = field(default=1.0, metadata={"help": "guest tokens minted per second per client address"})
    guest_burst: int = field(default=20, metadata={"help": "guest token burst per client address"})
    guest_checkout: bool = field(default=True, metadata={
        "help": "let guest tokens tap and check out (--no-guest-checkout: guests watch and chat only)"})
    limiter_entries: int = field(default=100_000, metadata={
        "help": "client addresses and idle users the rate limiters remember (oldest forgotten first)"})
    keepalive_timeout: float = field(default=75.0, metadata={
        "help": "seconds an HTTP connection may stay idle between requests (then closed)"})
    max_catalog_bytes: int = field(default=256 * 1024, metadata={
        "help": "a room's products as JSON, at most (and at most a quarter of --send-queue-bytes, so a "
                "snapshot always fits): past it product.put is refused full"})
    permessage_deflate: bool = field(default=False, metadata={"help": "offer websocket compression"})
    ice_servers: str = field(default="", metadata={"help": "comma-separated STUN/TURN URLs (none by default)"})
    announce: str = field(default="", metadata={"help": "comma-separated addresses announced as ICE candidates"})
    media_listen: str = field(default="0.0.0.0", metadata={"help": "UDP bind address for announced foreign IPs"})
    media_rcvbuf: int = field(default=4 << 20, metadata={"help": "UDP receive buffer per peer, bytes"})
    max_viewers_per_room: int = field(default=500, metadata={"help": "media viewers per room (then 503)"})
    max_peers: int = field(default=2000, metadata={"help": "media peer connections per process (then 503)"})
    max_sdp_bytes: int = field(default=32 * 1024, metadata={"help": "largest SDP offer or trickle fragment (then 413)"})
    max_remote_candidates: int = field(default=32, metadata={
        "help": "ICE candidates one media session may send, offer and trickle together (then 400 or 422)"})
    ice_candidate_filter: str = field(default="", metadata={
        "help": "remote ICE candidate ranges never contacted: CIDRs or loopback, private, link-local, multicast, "
                "unspecified, non-global (comma-separated)"})
    patch_rate: float = field(default=2.0, metadata={
        "help": "WHIP/WHEP PATCH requests per second per session (then 429)"})
    patch_burst: int = field(default=10, metadata={"help": "WHIP/WHEP PATCH burst per session"})
    connect_timeout: float = field(default=20.0, metadata={
        "help": "seconds a publisher or viewer may take to connect (ICE + DTLS) before it is dropped"})
    max_connecting_per_room: int = field(default=20, metadata={"help": "viewers still connecting per room (then 503)"})
    max_connecting: int = field(default=200, metadata={"help": "viewers still connecting per process (then 503)"})
    publisher_reserve: int = field(default=20, metadata={
        "help": "media sessions of --max-peers that only publishers may take"})
    rtx_rate: float = field(default=200.0, metadata={"help": "retransmitted packets per second per viewer"})
    rtx_per_packet: int = field(default=3, metadata={"help": "times one packet may be retransmitted to one viewer"})
    ended_session_ttl: float = field(default=60.0, metadata={
        "help": "seconds an ended WHIP/WHEP session still answers DELETE with 200"})
    ended_sessions_max: int = field(default=10000, metadata={"help": "ended session ids kept for DELETE"})
    max_media_sections: int = field(default=16, metadata={
        "help": "media sections (m= lines) one SDP offer may hold (then 400)"})
    pli_interval: float = field(default=1.0, metadata={"help": "min seconds between keyframe requests"})
    publisher_idle: float = field(default=3.0, metadata={
        "help": "seconds without media before a room shows offline and a new WHIP POST with its key takes over"})
    edge_linger: float = field(default=5.0, metadata={
        "help": "seconds an edge node keeps pulling a room from its origin after its last viewer of it left"})
    edge_poll: float = field(default=1.0, metadata={
        "help": "seconds between an edge node's checks of which node holds a pulled room's publisher"})
    max_edges_per_node: int = field(default=16, metadata={
        "help": "pulls of one room this node feeds to other nodes; past it they pull from its edges (a tree)"})
    max_edge_depth: int = field(default=3, metadata={
        "help": "longest chain of pulls from a room's origin to an edge (1: edges pull from the origin only)"})
    forwarding: str = field(default="fast", metadata={"help": "media forwarding path: fast or stock (aiortc senders)"})
    record: bool = field(default=True, metadata={"help": "record every broadcast (H264 + Opus, remuxed to fMP4)"})
    recordings_dir: str = field(default="", metadata={"help": "recordings directory (default: DATA_DIR/recordings)"})
    recordings_max_bytes: int = field(default=20 * 2**30, metadata={
        "help": "total bytes of recordings kept, the oldest deleted first (0: no bound; default 20 GiB, "
                "about 19 hours of 2.5 Mbit/s shows)"})
    recordings_max_age: float = field(default=0.0, metadata={
        "help": "seconds a finished recording is kept, counted from its end (0: no bound)"})
    recording_queue: int = field(default=2000, metadata={
        "help": "frames queued for one recording's writer thread; past it the recording fails, the stream goes on"})
    recording_segment: float = field(default=2.0, metadata={"help": "target seconds of a recording segment"})
    recording_rejoin: float = field(default=30.0, metadata={
        "help": "seconds a broadcast's recording waits for its publisher to return before it ends"})
    hls: bool = field(default=True, metadata={
        "help": "serve live Low-Latency HLS at /hls/{room}/index.m3u8 (H264 rooms; segmented only while asked for)"})
    hls_part: float = field(default=0.5, metadata={
        "help": "LL-HLS part target, seconds (EXT-X-PART-INF PART-TARGET; 0.1 to half of --hls-segment)"})
    hls_segment: float = field(default=2.0, metadata={
        "help": "target seconds of a live HLS segment (cut at the first keyframe past 90%% of it, never in a GOP)"})
    hls_window: int = field(default=12, metadata={
        "help": "complete live HLS segments kept in memory per room and listed in its playlist"})
    hls_block_timeout: float = field(default=6.0, metadata={
        "help": "seconds a blocking playlist reload or a preload-hinted part waits at most (then 503)"})
    hls_max_blocked: int = field(default=2000, metadata={
        "help": "HLS requests waiting at once on this node (blocking reloads, hinted parts); more get 503"})
    hls_idle: float = field(default=60.0, metadata={
        "help": "seconds a room's live HLS segmenter runs after its last HLS request (unless recorded)"})
    hls_queue: int = field(default=600, metadata={
        "help": "frames queued for one room's live HLS segmenter thread; past it the stream starts again"})
    hls_max_rooms: int = field(default=100, metadata={
        "help": "rooms segmented for live HLS at once on this node (then 503)"})
    shutdown_grace: float = field(default=3.0, metadata={"help": "seconds to close clients on stop"})
    hold_seconds: float = field(default=600.0, metadata={"help": "how long a tap holds units in a cart, s"})
    tap_rate: float = field(default=5.0, metadata={"help": "taps, uncarts and checkouts per second per user"})
    tap_burst: int = field(default=10, metadata={"help": "tap burst per user"})
    max_tap_qty: int = field(default=20, metadata={"help": "largest quantity one tap may reserve"})
    max_user_requests: int = field(default=1000, metadata={
        "help": "tap and checkout ids remembered per user and room, each for the hold time (retries are "
                "idempotent within it); past this, only that user's oldest are forgotten"})
    max_products: int = field(default=500, metadata={"help": "products in one room's catalog"})
    max_tags: int = field(default=8, metadata={"help": "product tags pinned at once per room"})
    max_sales: int = field(default=100, metadata={"help": "flash sales kept per room"})
    auto_confirm: bool = field(default=False, metadata={"help": "mark orders paid when placed (demos, no payment)"})
    purchase_log_size: int = field(default=1_000_000, metadata={"help": "purchase events kept for readers"})
    fsync_orders: bool = field(default=False, metadata={
        "help": "fsync every order commit: survives power loss, not just a crash (~4 ms each, on the database thread)"})
    db_busy_timeout: float = field(default=1.0, metadata={
        "help": "seconds a database call waits for a lock another connection holds; then it answers unavailable"})
    commerce_tick_ms: int = field(default=200, metadata={"help": "room clock tick: expiry, sale start/end, ms"})
    gc_policy: str = field(default="freeze", metadata={
        "help": "garbage collector policy of livecart serve: freeze (no long pauses with big rooms) or default"})
    gc_thaw_below: int = field(default=0, metadata={
        "help": "freeze policy: thaw and fully collect when at most this many connections (ws + media) are open"})
    gc_young_ms: float = field(default=100.0, metadata={
        "help": "with the freeze policy, collect the youngest generation this often, ms (0: never)"})
    gc_warn_ms: float = field(default=20.0, metadata={"help": "log collections that hold the loop this long, ms"})
    public_ws_url: str = field(default="", metadata={
        "help": "websocket URL given to clients, as is (default: --public-url's host with --ws-port, path /ws)"})
    log_level: str = field(default="info", metadata={"help": "log level: debug, info, warning or error"})
    access_log: bool = field(default=False, metadata={
        "help": "log every HTTP request (method, path without query, status, bytes, ms) at info"})

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def recordings_path(self) -> Path:
        return Path(self.recordings_dir) if self.recordings_dir else self.data_path / "recordings"

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


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Expose Config fields (every one, or those in ``names``) as ``--kebab-name`` with their env variable."""
    for f in fields(Config):
        if names is not None and f.name not in names:
            continue
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
    """Build the Config: flag, else environment variable, else default.

    Raises ValueError naming the variable when an environment value does not parse.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Config):
        kind = _TYPES[str(f.type)]
        flag_value = getattr(args, f.name, None)
        env_value = env.get("LIVECART_" + f.name.upper())
        if flag_value is not None:
            values[f.name] = flag_value
        elif env_value is not None:
            try:
                values[f.name] = _parse_value(kind, env_value)
            except ValueError:
                raise ValueError(f"LIVECART_{f.name.upper()}={env_value!r} is not a valid {kind.__name__}") from None
    return Config(**values)

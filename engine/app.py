"""Wiring: builds the backends, the HTTP and websocket servers and the features, starts and stops them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from engine import metrics
from engine.bus.base import Bus
from engine.bus.memory import MemoryBus
from engine.bus.redis import RedisBus
from engine.cluster import Cluster
from engine.config import Config
from engine.demo import seed_demo_catalog
from engine.hls.service import HlsConfig, HlsService
from engine.media.config import MediaConfig
from engine.media.service import MediaService
from engine.nodes.credential import NodeCredentials
from engine.recording.service import RecordingConfig, RecordingService
from engine.recording.shared import SharedRecordings
from engine.rooms import RoomError, Rooms, SqliteRoomDirectory
from engine.shared_state import SharedState
from engine.storage import DataDirLock, Storage, StorageUnavailable
from engine.urls import PublicUrls, public_urls
from overlays.purchases.base import PurchaseLog
from overlays.purchases.sqlite import SqlitePurchaseLog
from overlays.records import RecordStore, SqliteRecords
from overlays.runtime import Commerce
from overlays.shop import ShopConfig
from overlays.stock.memory import MemoryStockStore
from overlays.stock.redis import RedisStockStore
from signaling.access import ViewAccess
from signaling.accesslog import AccessLogger
from signaling.audience_redis import SharedViewers
from signaling.channel import Channel
from signaling.chat import register_chat
from signaling.commerce import commerce_routes, register_commerce
from signaling.guard import AddressGate, GuardedSite, body_deadline, next_head_deadline
from signaling.hls import HlsEndpoints, hls_routes
from signaling.hlslane import HlsLanes
from signaling.http import Auth, errors_as_json, room_routes
from signaling.pages import add_page_routes
from signaling.purchases import purchase_routes, register_purchases
from signaling.recordings import recording_routes
from signaling.whip import add_media_routes, register_media

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The engine cannot start as configured (a port taken, ...): one line for the operator, no traceback."""


def _reason(exc: OSError) -> str:
    """The system's words for a socket error ("Address already in use"), without asyncio's wrapping."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class App:
    """One engine process. ``await start()`` serves; ``await stop()`` closes clients resumably."""

    def __init__(self, config: Config) -> None:
        # Settings are checked before any I/O: a bad one leaves nothing behind on disk.
        public_urls(config, config.http_port, config.ws_port)
        media = media_config(config)
        hls = hls_config(config) if config.hls else None
        self.cluster = Cluster(config, rooms=lambda: [room.id for room in self.rooms.list()],
                               urls=lambda: (self.urls().base, self.urls().ws), load=self.load,
                               media_free=lambda: self.media.viewer_capacity, relays=lambda: self.media.relays())
        self.config = config
        # With --redis-url, settings, rooms, records and the purchase log are shared by every node.
        self.shared = SharedState(config) if config.redis_url else None
        self.lock = DataDirLock(config.data_path)  # DataDirInUse if another process serves it
        self.storage = Storage(config.data_path, busy_timeout=config.db_busy_timeout, fsync=config.fsync_orders)
        settings = self.shared or self.storage
        self.secret = config.secret or settings.secret_setting("secret")
        self.admin_key = config.admin_key or settings.secret_setting("admin_key")
        self.rooms = Rooms(self.shared.rooms if self.shared else SqliteRoomDirectory(self.storage))
        self.bus = bus(config)
        self.channel = Channel(config, self.bus, self.rooms, self.secret)
        self.viewer_tally: SharedViewers | None = None
        if self.shared is not None:  # a room's viewers are counted over every node
            self.viewer_tally = SharedViewers(
                self.shared.client, config.redis_prefix, self.cluster.node_id,
                lambda room, count: self.bus.set_state(room, "viewers", "viewers", {"count": count}),
                self.cluster.clocks.held, interval=config.viewers_interval, ttl=config.node_ttl)
            self.channel.audience.share(self.viewer_tally)
        register_chat(self.channel, self.bus, config)
        middlewares = [next_head_deadline, errors_as_json, body_deadline(config.http_read_timeout)]
        self.http = web.Application(middlewares=middlewares, client_max_size=1 << 20)
        self.http_gate = AddressGate(config.max_http_per_ip)
        self.guest_limiter = room_routes(self.http, config, self.rooms, Auth(self.secret, self.admin_key),
                                         self.viewers, self.urls, health=self.health)
        purchase_log, records = self._commerce_storage()
        self.stock = stock_store(config)
        self.commerce = Commerce(
            self.bus, stock=self.stock, log=purchase_log,
            records=records, config=shop_config(config),
            room_exists=lambda room: self.rooms.get(room) is not None, tick_seconds=config.commerce_tick_ms / 1000,
            clock_leases=self.cluster.clocks if config.redis_url else None)
        register_commerce(self.channel, self.commerce, config)
        self.purchases = register_purchases(self.channel, self.commerce.log, config)
        commerce_routes(self.http, self.commerce, Auth(self.secret, self.admin_key))
        purchase_routes(self.http, self.commerce.log, Auth(self.secret, self.admin_key))
        self.media = MediaService(config=media, rooms=self.rooms, bus=self.bus, audience=self.channel.audience)
        self.media.on_publisher = self.cluster.presence.publisher
        self.recordings = RecordingService(recording_config(config), self.bus, wanted=self._records)
        if config.record:
            self.media.taps.append(self.recordings)
        # With --redis-url every node lists (and redirects to) the recordings the other live nodes hold.
        self.shared_recordings: SharedRecordings | None = None
        if self.shared is not None:
            self.shared_recordings = SharedRecordings(
                self.shared.client, config.redis_prefix, self.cluster.node_id, self.recordings,
                self.cluster.presence.view_nodes, config.node_heartbeat, config.node_ttl)
        access = ViewAccess(self.rooms, self.secret)
        recording_routes(self.http, self.recordings, self.rooms, Auth(self.secret, self.admin_key), access,
                         self.urls, self.shared_recordings)
        self.hls: HlsService | None = None
        self.hls_lanes: HlsLanes | None = None
        if hls is not None:
            self.hls = HlsService(hls, self.media.codecs, self.media.request_keyframe)
            self.media.taps.append(self.hls)
            self.media.wanted_rooms = self.hls.wanted_rooms
            endpoints = HlsEndpoints(self.hls, self.rooms, access, self.media.want)
            hls_routes(self.http, endpoints)
            access_log = logging.getLogger("livecart.access") if config.access_log else None
            self.hls_lanes = HlsLanes(endpoints, config.keepalive_timeout, access_log)
        node_credentials = NodeCredentials(self.secret)
        if config.redis_url:  # other nodes may hold rooms' publishers: pull them for viewers here
            node = self.cluster.node_id
            self.media.enable_cascade(node, self.cluster.origin,
                                      lambda room: node_credentials.mint(node, room))
        add_media_routes(self.http, self.media, access, node_credentials,
                         elsewhere=self._roomier_node if config.redis_url else None)
        register_media(self.channel, self.media, access)
        add_page_routes(self.http, config, self.rooms, self.urls, self.recordings, access,
                        self.shared_recordings)
        self._runner: web.AppRunner | None = None
        self.http_port = config.http_port
        self.ws_port = config.ws_port

    def _commerce_storage(self) -> tuple[PurchaseLog, RecordStore]:
        """The purchase log and the records, on Redis when shared; else they share the storage's one
        connection on its own thread: an order and its log entry commit in one transaction, and no
        commit runs on the loop."""
        if self.shared is not None:
            return self.shared.log, self.shared.records
        purchase_log = SqlitePurchaseLog(self.storage.db, self.config.purchase_log_size)
        return purchase_log, SqliteRecords(self.storage.db, purchase_log)

    def _records(self, room_id: str) -> bool:
        """Whether ``room_id``'s setting has its broadcasts recorded (a room unknown here: yes)."""
        room = self.rooms.get(room_id)
        return room is None or room.record

    def urls(self) -> PublicUrls:
        """Where clients reach this engine, with the ports it actually listens on (0 means any)."""
        return public_urls(self.config, self.http_port, self.ws_port)

    def viewers(self, room: str) -> int:
        """People watching ``room``, each once, by websocket, WHEP or both (signaling.audience)."""
        return self.channel.audience.count(room)

    def health(self) -> dict[str, Any]:
        """What /healthz tells: this node, and its bus; ``degraded`` while the bus cannot reach Redis
        (websockets stay open and the bus reconnects by itself, but nothing is published meanwhile)."""
        bus = self.bus.health()
        view: dict[str, Any] = {"node": self.cluster.view(), "bus": bus, "media": self.media.rooms_view()}
        if not bus["connected"]:
            view["status"] = "degraded"
        return view

    def _roomier_node(self) -> str | None:
        """The public HTTP base URL of another node that takes more media viewers, if any."""
        node = self.cluster.roomiest()
        return node.http_url if node is not None else None

    def load(self) -> tuple[int, int]:
        """(viewers, open connections) of this node, for its registry heartbeat."""
        viewers = sum(self.channel.audience.local(room.id) for room in self.rooms.list())
        return viewers, len(self.channel.sessions) + self.media.peer_count

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()
        await self.rooms.start()
        new_demo = bool(self.config.demo_room) and self.rooms.get(self.config.demo_room) is None
        if new_demo:
            try:
                await self.rooms.create(self.config.demo_room, "Demo room")
            except RoomError as exc:
                if exc.code != "conflict":
                    raise
                new_demo = False  # another node sharing the rooms created it first
        metrics.ROOMS.set(len(self.rooms.list()))
        if isinstance(self.stock, RedisStockStore):
            try:
                await self.stock.ping()
            except StorageUnavailable as exc:
                raise StartupError(f"cannot reach Redis (--redis-url): {exc}") from exc
        await self.bus.start()
        await self.commerce.start(room.id for room in self.rooms.list())
        if new_demo and self.config.demo_catalog:
            await seed_demo_catalog(self.commerce, self.config.demo_room)
        await self.media.start()
        await self.recordings.start()
        if self.hls is not None:
            await self.hls.start()
        try:
            await self.channel.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.config.host} port {self.config.ws_port} "
                               f"(--ws-port): {_reason(exc)}") from exc
        self.ws_port = self.channel.port
        access_log = logging.getLogger("livecart.access") if self.config.access_log else None
        self._runner = web.AppRunner(self.http, access_log=access_log, access_log_class=AccessLogger,
                                     handle_signals=False, lingering_time=self.config.http_read_timeout,
                                     keepalive_timeout=self.config.keepalive_timeout)
        await self._runner.setup()
        site = GuardedSite(self._runner, self.config.host, self.config.http_port, self.http_gate,
                           self.config.http_read_timeout, self.hls_lanes)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.config.host} port {self.config.http_port} "
                               f"(--http-port): {_reason(exc)}") from exc
        self.http_port = self._runner.addresses[0][1]
        # Announced, and taking rooms' clocks, only once it serves: a node that cannot listen is never listed.
        await self.cluster.start()
        if self.viewer_tally is not None:
            await self.viewer_tally.start()
        if self.shared_recordings is not None:  # after the cluster: it reads the live nodes
            await self.shared_recordings.start()

    async def stop(self) -> None:
        """Stop every part in order; a part that does not finish within STOP_STEP is left behind
        with a warning (a Redis call cut off mid-way can leave a task waiting on nothing), so a
        stop always ends and the data directory is always released."""
        await _bounded("websocket channel", self.channel.stop())
        if self._runner is not None:
            await _bounded("HTTP server", self._runner.cleanup())
        await _bounded("media relay", self.media.stop())
        await _bounded("recordings", self.recordings.stop())
        if self.shared_recordings is not None:
            await _bounded("recordings index", self.shared_recordings.stop())
        if self.hls is not None:
            await _bounded("live HLS", self.hls.stop())
        await _bounded("purchase subscriptions", self.purchases.stop())
        if self.viewer_tally is not None:
            await _bounded("viewer counts", self.viewer_tally.stop())
        await _bounded("commerce", self.commerce.stop())
        await _bounded("rooms", self.rooms.stop())
        if self.shared is not None:
            await _bounded("shared state", self.shared.stop())
        await _bounded("cluster", self.cluster.stop())
        if isinstance(self.stock, RedisStockStore):
            await _bounded("stock store", self.stock.close())
        await _bounded("event bus", self.bus.stop())
        self.storage.close()
        self.lock.release()


#: Seconds one part of the engine may take to stop (the channel's own grace is inside it).
STOP_STEP = 15.0


async def _bounded(part: str, stopping: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=STOP_STEP)
    if not done:
        log.warning("%s did not stop within %.0f s; the engine stops without it", part, STOP_STEP)
        task.cancel()
    elif task.exception() is not None:
        log.error("%s failed to stop", part, exc_info=task.exception())


def bus(config: Config) -> Bus:
    """The event bus: on Redis with ``--redis-url`` (rooms' events shared by every node), else in memory."""
    if config.redis_url:
        return RedisBus(config.redis_url, config.redis_prefix, config.tick_ms, config.history_size,
                        config.history_age, timeout=config.redis_timeout, tick_max_ms=config.tick_max_ms,
                        batch=config.redis_batch, direct_queue=config.redis_direct_queue,
                        pipelines=config.redis_pipelines)
    return MemoryBus(config.tick_ms, config.history_size, config.history_age, config.tick_max_ms)


def hls_config(config: Config) -> HlsConfig:
    """Live HLS settings from the engine's flags (ValueError names a flag out of its bounds)."""
    return HlsConfig(part_seconds=config.hls_part, segment_seconds=config.hls_segment,
                     window_segments=config.hls_window, block_timeout=config.hls_block_timeout,
                     max_blocked=config.hls_max_blocked, idle_seconds=config.hls_idle,
                     queue_frames=config.hls_queue, max_rooms=config.hls_max_rooms)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def media_config(config: Config) -> MediaConfig:
    """The relay's settings from the engine's flags and environment."""
    return MediaConfig(
        ice_servers=_csv(config.ice_servers),
        announced_addresses=_csv(config.announce),
        listen_address=config.media_listen,
        socket_receive_buffer=config.media_rcvbuf,
        max_viewers_per_room=config.max_viewers_per_room,
        max_peers=config.max_peers,
        pli_min_interval=config.pli_interval,
        forwarding=config.forwarding,
        max_sdp_bytes=config.max_sdp_bytes,
        max_remote_candidates=config.max_remote_candidates,
        max_media_sections=config.max_media_sections,
        ice_candidate_filter=config.ice_candidate_filter,
        patch_rate=config.patch_rate,
        patch_burst=config.patch_burst,
        connect_timeout=config.connect_timeout,
        max_connecting_per_room=config.max_connecting_per_room,
        max_connecting=config.max_connecting,
        publisher_reserve=config.publisher_reserve,
        rtx_rate=config.rtx_rate,
        rtx_per_packet=config.rtx_per_packet,
        ended_session_ttl=config.ended_session_ttl,
        ended_sessions_max=config.ended_sessions_max,
        publisher_idle=config.publisher_idle,
        edge_linger=config.edge_linger,
        edge_poll=config.edge_poll,
        max_edges_per_node=config.max_edges_per_node,
        max_edge_depth=config.max_edge_depth,
    )


def recording_config(config: Config) -> RecordingConfig:
    """The recorder's settings from the engine's flags and environment."""
    return RecordingConfig(directory=config.recordings_path, queue_frames=config.recording_queue,
                           segment_seconds=config.recording_segment, rejoin_seconds=config.recording_rejoin,
                           max_bytes=config.recordings_max_bytes, max_age=config.recordings_max_age)


def stock_store(config: Config) -> MemoryStockStore | RedisStockStore:
    """Stock and carts in this process, or on Redis with --redis-url (shared by every node using it)."""
    if not config.redis_url:
        return MemoryStockStore(config.max_user_requests)
    return RedisStockStore.from_url(config.redis_url, prefix=config.redis_prefix,
                                    max_user_requests=config.max_user_requests, timeout=config.redis_timeout,
                                    max_connections=config.redis_connections, batch=config.redis_batch,
                                    pipelines=config.redis_pipelines)


def shop_config(config: Config) -> ShopConfig:
    """Each room's shop limits from the engine's flags and environment."""
    return ShopConfig(
        hold_seconds=config.hold_seconds,
        max_products=config.max_products,
        # Every snapshot carries the catalog: it must fit a client's send queue with room to spare.
        max_catalog_bytes=min(config.max_catalog_bytes, config.send_queue_bytes // 4),
        max_tags=config.max_tags,
        max_sales=config.max_sales,
        max_tap_qty=config.max_tap_qty,
        user_requests=config.max_user_requests,
        auto_confirm=config.auto_confirm,
    )

"""Purchase events for other services: a websocket subscription and an HTTP read of the purchase log.

The log is durable and ordered, so a subscriber is simply a reader with a cursor: it streams
entries after the position the service last saw, in log order, then waits for appends. Nothing
is queued per subscriber beyond the connection's send buffer (when that is full the reader
pauses), so a slow service costs memory for nothing but its socket. A service whose position is
older than the log's retention gets `too_old` rather than a silent gap.

Scope: a service token for room "*" reads every room; a service token for one room reads that
room's entries only (log ids stay global, so resuming works the same).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from engine.config import Config
from engine.digits import parse_uint
from engine.tasks import cancel_and_wait
from overlays.events import DomainError
from overlays.purchases.base import MAX_READ, LogEntry, PurchaseLog, check_limit, format_id, parse_id
from signaling.channel import Channel, Session
from signaling.http import ApiError, Auth, bearer, json_response
from signaling.protocol import CLOSE_TOO_SLOW, ProtocolError
from signaling.tokens import TokenError, verify

log = logging.getLogger(__name__)

BATCH = 100  # entries read per step; the send buffer limit bounds what is in flight
DRAIN_POLL = 0.01  # seconds between checks of a full send buffer


async def check_position(purchases: PurchaseLog, after: str | None) -> int:
    """The resume position as an int, or why it cannot be honoured.

    Every log (memory, SQLite, the Redis stream) numbers entries contiguously, so a position is
    still covered when the oldest retained entry is at most one past it."""
    try:
        position = parse_id(after)
    except DomainError as exc:
        raise ProtocolError(exc.code, exc.message) from None
    if position == 0:
        return 0
    last = await purchases.last_id()
    if last is None or position > int(last):
        raise ProtocolError("bad_request", "after is beyond the end of this purchase log")
    oldest = await purchases.read(None, 1)
    if oldest and int(oldest[0].id) > position + 1:
        raise ProtocolError("too_old", f"entries after {after} are past retention; resume from the oldest")
    return position


def _visible(entry: LogEntry, room: str) -> bool:
    return room == "*" or entry.event.get("data", {}).get("room") == room


class Subscriptions:
    """One reader task per subscribed connection."""

    def __init__(self, purchases: PurchaseLog, config: Config) -> None:
        self.purchases = purchases
        self.config = config
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def subscribe(self, session: Session, message: dict[str, Any]) -> dict[str, Any]:
        after = message.get("after")
        if after is not None and not isinstance(after, str):
            raise ProtocolError("bad_request", "after must be a log id string")
        position = await check_position(self.purchases, after)
        last_id = await self.purchases.last_id()
        self.cancel(session)
        task = asyncio.get_running_loop().create_task(self._stream(session, position))
        self._tasks[session.conn_id] = task
        task.add_done_callback(lambda done: self._forget(session.conn_id, done))
        # Nothing is awaited after the reader starts: its first write happens on a later loop turn,
        # after the channel sends this ack.
        return {"last_id": last_id}

    def _forget(self, conn_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(conn_id) is task:
            del self._tasks[conn_id]

    def cancel(self, session: Session) -> None:
        task = self._tasks.pop(session.conn_id, None)
        if task is not None:
            task.cancel()

    async def on_close(self, session: Session) -> None:
        self.cancel(session)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        await cancel_and_wait(*tasks)

    async def _stream(self, session: Session, position: int) -> None:
        # An entry is written only with half the send queue free, so it always fits; if one does not
        # (a reply to the client's other messages filled the rest), the connection is closed with
        # the resumable 4008 rather than leave a gap: the service resubscribes with its last id.
        limit = self.config.send_queue_bytes // 2
        gapless = position != 0  # "from the start" means from the oldest entry retained
        try:
            while session.open:
                wake = self.purchases.waiter()
                entries = await self.purchases.read(format_id(position), BATCH)
                if gapless and entries and int(entries[0].id) != position + 1:
                    session.send_now({"type": "error", "code": "too_old",
                                      "message": f"entries after {format_id(position)} were dropped by"
                                                 " retention while this reader was behind"})
                    return
                for entry in entries:
                    while session.open and session.transport.get_write_buffer_size() > limit:
                        await asyncio.sleep(DRAIN_POLL)
                    if _visible(entry, session.room) and not session.send_now(
                            {"type": "purchase", "id": entry.id, "event": entry.event}):
                        session.close(CLOSE_TOO_SLOW, "too slow: resubscribe with after")
                        return
                    position = int(entry.id)
                gapless = gapless or bool(entries)
                if len(entries) < BATCH:
                    await wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("purchase subscription failed")
            session.send_now({"type": "error", "code": "internal", "message": "the subscription failed"})


def register_purchases(channel: Channel, purchases: PurchaseLog, config: Config) -> Subscriptions:
    subscriptions = Subscriptions(purchases, config)
    channel.actions.register("subscribe", frozenset({"service"}), subscriptions.subscribe)
    channel.on_close.append(subscriptions.on_close)
    return subscriptions


def purchase_routes(app: web.Application, purchases: PurchaseLog, auth: Auth) -> None:
    """GET /api/purchases?after=ID&limit=N: the same entries over HTTP, for batch readers.
    `next` is the position to pass as `after` next time (it moves past entries of other rooms)."""

    async def read(request: web.Request) -> web.Response:
        room = "*"
        if not auth.is_admin(request):
            try:
                identity = verify(auth.secret, bearer(request))
            except TokenError as exc:
                raise ApiError(exc.code, exc.message) from None
            if identity.role != "service":
                raise ApiError("forbidden", "reading purchase events needs a service token")
            room = identity.room
        limit = parse_uint(request.query.get("limit", "100"), len(str(MAX_READ)))
        if limit is None:
            raise ApiError("bad_request", f"limit must be an integer in [1, {MAX_READ}]")
        after = request.query.get("after") or None
        try:
            position = await check_position(purchases, after)
            entries = await purchases.read(format_id(position), check_limit(limit))
        except ProtocolError as exc:
            raise ApiError(exc.code, exc.message, 410 if exc.code == "too_old" else 400) from None
        except DomainError as exc:
            raise ApiError(exc.code, exc.message) from None
        visible = [{"id": e.id, "event": e.event} for e in entries if _visible(e, room)]
        next_id = entries[-1].id if entries else (format_id(position) if position else after)
        return json_response({"entries": visible, "next": next_id, "last_id": await purchases.last_id()})

    app.router.add_get("/api/purchases", read)

"""The bus on Redis: every node sharing one Redis (and key prefix) sees each room's one order.

Per room ``R`` (the room is the hash tag, so a room's keys share one Cluster slot):
- ``{prefix}bus:{R}:meta``: a hash with ``epoch`` and ``seq``. The epoch is the time (µs) the
  stream was created and the first seq, as in the memory bus, so a seq from a lost stream
  (Redis flushed) is recognised as too old and its client gets a snapshot;
- ``{prefix}bus:{R}:history``: a stream capped at ``history_size``, one entry per event with
  the event's seq as its id;
- ``{prefix}bus:{R}:state``: a hash of the room's state values, for snapshots on any node;
- the pub/sub channel ``{prefix}bus:{R}``, carrying each event and the room's direct messages.

Publishes and direct messages go out pipelined with the other calls of the same loop turn
(engine.redisbatch). A direct message reaches this node's connections at once; the copy for the
user's connections on other nodes is not awaited: it goes out with the next pipeline, tagged with
this node's origin so that this node skips it when pub/sub brings it back.

Publishing is one Lua script: draw the seq, append to the history, publish. A discrete event takes
the room's pending state values with it (the same script gives them the seqs right after it, and
one pub/sub message carries them all, so every node hands them to its viewers as one batch); what
is still pending at the tick goes out the same way, on the pace shared with the memory bus
(engine.bus.pacing). Each node holds one
pub/sub connection, subscribed to the rooms it has a hub for, and keeps for each such room a
mirror (seq, state, recent history) fed from it, so the websocket layer's reads stay synchronous.
Loading a mirror subscribes first, then reads history and state in one script, and merges the
messages that arrived meanwhile by seq: no gap, no duplicate. A seq that skips ahead (a message
lost while disconnected) or a new epoch starts the same load again; when the history no longer
covers the gap the room's listeners are told to resync their clients with a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any, NamedTuple, TypeVar

import orjson
from prometheus_client import Counter, Gauge
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from engine import metrics
from engine.bus.base import Event, RoomListener
from engine.bus.pacing import Ticker
from engine.bus.pending import PendingState, Values
from engine.errors import CodedError
from engine.redisbatch import RedisBatcher
from engine.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

BUS_CONNECTED = Gauge("livecart_bus_connected", "1 while the bus's Redis pub/sub connection is up, else 0")
BUS_RECONNECTS = Counter("livecart_bus_reconnects_total", "Times the bus's pub/sub connection was lost and made again")
BUS_RESYNCS = Counter(
    "livecart_bus_resyncs_total",
    "Room mirrors reloaded after a gap: 'filled' (missed events replayed), 'snapshot' (clients resynced)",
    ["outcome"],
)

# Shared by both scripts: the room's epoch, creating the stream if it has none (a stream or
# state without its meta hash is a remnant of a lost stream and is dropped with it).
_EPOCH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[1])
  epoch = ARGV[1]
end
"""

# ARGV: now (µs), channel, history size, then per event: kind, state key, state value, body.
# Each message is "KIND EPOCH SEQ BODY", kept in the history one per entry and published all in
# one pub/sub message, one per line (a JSON body has no raw newline). Seqs pass Lua's doubles
# exactly (< 2^53) and are formatted with %d, since Lua would write a 16-digit number in exponent form.
_PUBLISH = _EPOCH + """
local seqs = {}
local messages = {}
for i = 4, #ARGV, 4 do
  local seq = string.format('%d', redis.call('HINCRBY', KEYS[1], 'seq', 1))
  if ARGV[i] == 's' then
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
  end
  local message = ARGV[i] .. ' ' .. epoch .. ' ' .. seq .. ' ' .. ARGV[i + 3]
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 'm', message)
  messages[#messages + 1] = message
  seqs[#seqs + 1] = seq
end
redis.call('PUBLISH', ARGV[2], table.concat(messages, '\\n'))
return seqs
"""

# ARGV: now (µs), history size. Returns the epoch, the seq, the newest entries and the state.
_LOAD = _EPOCH + """
return {epoch, redis.call('HGET', KEYS[1], 'seq'),
        redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2]),
        redis.call('HGETALL', KEYS[3])}
"""


class BusUnavailable(CodedError):
    """Redis did not take the event now: nothing was published, retry."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class _Message(NamedTuple):
    """A room event as it travels through pub/sub and the history stream."""

    kind: bytes  # b"e" a discrete event, b"s" a state event
    epoch: int
    seq: int
    body: bytes

    @classmethod
    def parse(cls, raw: bytes) -> _Message:
        kind, epoch, seq, body = raw.split(b" ", 3)
        return cls(kind, int(epoch), int(seq), body)

    def event(self, room: str) -> Event:
        body = orjson.loads(self.body)
        return Event(room, self.seq, body["type"], body["data"], body["ts"])


class _Mirror:
    """This node's copy of one subscribed room: what the websocket layer reads synchronously."""

    __slots__ = ("channel", "epoch", "seq", "history", "state", "listeners", "loaded", "buffer", "loader")

    def __init__(self, channel: bytes, history_size: int) -> None:
        self.channel = channel
        self.epoch = 0
        self.seq = 0
        self.history: deque[Event] = deque(maxlen=history_size)
        self.state: dict[str, dict[str, Any]] = {}
        self.listeners: list[RoomListener] = []
        self.loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # While a load runs, live messages wait here (at most history_size; past that the load
        # is simply run again) to be merged after what the load read.
        self.buffer: list[_Message] | None = []
        self.loader: asyncio.Task[None] | None = None


def _in_task(call: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """The Redis client's timeouts need a current task; the websocket layer runs the first step of
    a message's handler (a chat, say) right in its callback, outside any task."""
    return call if asyncio.current_task() is not None else asyncio.ensure_future(call)


def _state_entry(type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type, **data}


def _state_items(values: Values, ts: float) -> list[Any]:
    """The publish script's arguments for state values: per key its kind, key, entry and body."""
    items: list[Any] = []
    for key, (type, data) in values.items():
        body = {"type": type, "data": {"key": key, **data}, "ts": ts}
        items += [b"s", key, orjson.dumps(_state_entry(type, data)), orjson.dumps(body)]
    return items


class RedisBus:
    """Bus backend shared by every node on the same Redis and prefix (see engine.bus.base.Bus).

    ``timeout`` bounds every Redis call (a publish while Redis is down fails with ``unavailable``
    within it) and is the pub/sub connection's keepalive interval; reconnection backs off up to
    ``max_backoff`` seconds; ``max_connections`` bounds the connections that publish, ``batch`` the
    commands one pipeline carries, ``direct_queue`` the direct messages for other nodes waiting."""

    def __init__(self, url: str, prefix: str = "livecart:", tick_ms: int = 50, history_size: int = 1024,
                 history_age: float = 300.0, timeout: float = 1.0, max_backoff: float = 2.0,
                 max_connections: int = 32, tick_max_ms: int | None = None, batch: int = 100,
                 direct_queue: int = 10_000, pipelines: int = 1) -> None:
        self._url = url
        self._prefix = prefix
        self._ticker = Ticker(tick_ms / 1000, (tick_max_ms if tick_max_ms is not None else tick_ms) / 1000,
                              self.flush_state)
        self._history_size = history_size
        self._history_age = history_age
        self._timeout = timeout
        self._max_backoff = max_backoff
        # RESP2 on both connections: pub/sub messages arrive as plain replies to the reader below.
        # At most ``max_connections`` publishes are in flight at once; more wait up to ``timeout``
        # for a connection (a burst of chats in many rooms), then fail ``unavailable``.
        self._client = Redis.from_pool(BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), protocol=2))
        self._batch = RedisBatcher(self._client.connection_pool, name="bus", timeout=timeout, max_batch=batch,
                                   max_posts=direct_queue, connections=pipelines)
        # Direct messages carry it: pub/sub brings this node's own back, already delivered here.
        self._origin = os.urandom(8).hex().encode()
        self._publish = self._client.register_script(_PUBLISH)
        self._load_script = self._client.register_script(_LOAD)
        self._mirrors: dict[str, _Mirror] = {}
        self._rooms_by_channel: dict[bytes, str] = {}
        self._pending = PendingState()
        self._connection: AbstractConnection | None = None
        self._up = asyncio.Event()
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._reconnects = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._writes: set[asyncio.Task[None]] = set()

    # -- keys -----------------------------------------------------------------------------------

    def _keys(self, room: str) -> list[str]:
        base = f"{self._prefix}bus:{{{room}}}"
        return [base + ":meta", base + ":history", base + ":state"]

    def _channel(self, room: str) -> bytes:
        return f"{self._prefix}bus:{{{room}}}".encode()

    # -- writing --------------------------------------------------------------------------------

    async def _run_publish(self, room: str, items: list[Any]) -> list[int]:
        try:
            seqs = await self._batch.evalsha(self._publish, self._keys(room), [
                int(time.time() * 1_000_000), self._channel(room), self._history_size, *items])
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"the event bus (Redis) is unavailable: {exc}") from None
        return [int(seq) for seq in seqs]

    async def publish(self, room: str, type: str, data: dict[str, Any]) -> Event:
        ts = time.time()
        body = orjson.dumps({"type": type, "data": data, "ts": ts})
        values = self._pending.take(room)
        try:
            seq, *_ = await self._run_publish(room, [b"e", b"", b"", body, *_state_items(values, ts)])
        except BusUnavailable:
            self._pending.put_back(room, values)
            raise
        metrics.EVENTS_PUBLISHED.inc(1 + len(values))
        return Event(room, seq, type, data, ts)

    def set_state(self, room: str, key: str, type: str, data: dict[str, Any]) -> None:
        self._pending.set(room, key, type, data)

    async def flush_state(self) -> None:
        """Publish every pending state value as one event per key, one script per room (each tick).

        Values Redis did not take wait again (unless newer ones came meanwhile) and go out at a
        later tick or with the room's next event: a state value is the latest one, so late is
        right and nothing piles up."""
        if not self._up.is_set():
            return  # Redis is away: keep the values rather than fail each room's write in turn
        for room, values in self._pending.take_all().items():
            try:
                await self._run_publish(room, _state_items(values, time.time()))
            except BusUnavailable:
                self._pending.put_back(room, values)
                continue
            metrics.EVENTS_PUBLISHED.inc(len(values))

    @property
    def tick(self) -> float:
        """The current coalescing interval in seconds (stretched while the loop is loaded)."""
        return self._ticker.interval

    async def send_direct(self, room: str, user: str, type: str, data: dict[str, Any]) -> None:
        """Deliver to this node's listeners now, and queue the copy for other nodes' without waiting
        for Redis: the caller's own round trip (a tap's script) stays its only one. A copy Redis does
        not take is lost (counted, logged once per outage); direct messages have no history anyway."""
        message = {**data, "type": type}
        mirror = self._mirrors.get(room)
        if mirror is not None:
            for listener in mirror.listeners:
                listener.on_direct(user, message)
        self._batch.post(b"PUBLISH", self._channel(room), b"d " + self._origin + b" " + orjson.dumps([user, message]))

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, room: str, listener: RoomListener) -> None:
        mirror = self._mirrors.get(room)
        if mirror is None:
            channel = self._channel(room)
            mirror = self._mirrors[room] = _Mirror(channel, self._history_size)
            self._rooms_by_channel[channel] = room
            if self._up.is_set():
                self._send_subscribe(channel)
            mirror.loader = asyncio.get_running_loop().create_task(self._load(room, mirror), name=f"bus-load:{room}")
        mirror.listeners.append(listener)

    def unsubscribe(self, room: str, listener: RoomListener) -> None:
        mirror = self._mirrors.get(room)
        if mirror is None or listener not in mirror.listeners:
            return
        mirror.listeners.remove(listener)
        if mirror.listeners:
            return
        del self._mirrors[room]
        del self._rooms_by_channel[mirror.channel]
        if mirror.loader is not None:
            mirror.loader.cancel()
        if not mirror.loaded.done():
            mirror.loaded.cancel()
        self._confirmed.pop(mirror.channel, None)
        if self._up.is_set() and self._connection is not None:
            self._send(b"UNSUBSCRIBE", mirror.channel)

    async def ready(self, room: str) -> None:
        """Wait until the room's mirror is loaded; ``unavailable`` if Redis does not answer in time."""
        mirror = self._mirrors.get(room)
        if mirror is None:
            raise RuntimeError(f"ready() for room {room!r} without a subscription")
        if mirror.loaded.done():
            return
        try:
            await _in_task(asyncio.wait_for(asyncio.shield(mirror.loaded), self._timeout * 3))
        except TimeoutError:
            raise BusUnavailable("the event bus (Redis) is unavailable: the room could not be loaded") from None

    # -- reading (from the mirror) --------------------------------------------------------------

    def seq(self, room: str) -> int:
        mirror = self._mirrors.get(room)
        return mirror.seq if mirror is not None else 0

    def state(self, room: str) -> dict[str, dict[str, Any]]:
        mirror = self._mirrors.get(room)
        return dict(mirror.state) if mirror is not None else {}

    def history(self, room: str, since: int) -> list[Event] | None:
        mirror = self._mirrors.get(room)
        if mirror is None or not mirror.loaded.done():
            return None
        if since == mirror.seq:
            return []
        if since > mirror.seq:
            return None
        cutoff = time.time() - self._history_age
        history = mirror.history
        while history and history[0].ts < cutoff:
            history.popleft()
        oldest = history[0].seq if history else mirror.seq + 1
        if since + 1 < oldest:
            return None
        return list(history)[since + 1 - oldest :]

    def health(self) -> dict[str, Any]:
        return {"backend": "redis", "connected": self._up.is_set(), "reconnects": self._reconnects,
                "rooms": len(self._mirrors)}

    # -- mirrors ----------------------------------------------------------------------------------

    def _on_message(self, channel: bytes, raw: bytes) -> None:
        room = self._rooms_by_channel.get(channel)
        if room is None:
            return
        mirror = self._mirrors[room]
        if raw.startswith(b"d "):
            origin, payload = raw[2:].split(b" ", 1)
            if origin == self._origin:
                return  # delivered here when it was sent
            user, message = orjson.loads(payload)
            for listener in mirror.listeners:
                listener.on_direct(user, message)
            return
        messages = [_Message.parse(line) for line in raw.split(b"\n")]
        if mirror.buffer is not None:
            # Past the bound the buffer is cut short, and the load runs again.
            mirror.buffer += messages[:self._history_size - len(mirror.buffer)]
            return
        fresh = [m for m in messages if not (m.epoch == mirror.epoch and m.seq <= mirror.seq)]  # else a load read it
        for i, message in enumerate(fresh):
            if message.epoch != mirror.epoch or message.seq != mirror.seq + 1 + i:
                if i:
                    self._apply(room, mirror, fresh[:i])
                self._reload(room, mirror, fresh[i:])
                return
        if fresh:
            self._apply(room, mirror, fresh)

    def _apply(self, room: str, mirror: _Mirror, messages: list[_Message]) -> None:
        """Take the next messages (consecutive seqs) into the mirror and hand them to the listeners."""
        events = [message.event(room) for message in messages]
        for message, event in zip(messages, events, strict=True):
            if message.kind == b"s":
                data = dict(event.data)
                key = data.pop("key")
                mirror.state[key] = _state_entry(event.type, data)
        mirror.history.extend(events)
        mirror.seq = messages[-1].seq
        for listener in mirror.listeners:
            listener.on_events(events)

    def _reload(self, room: str, mirror: _Mirror, pending: list[_Message]) -> None:
        """Buffer live messages and load the room again (a gap, a new epoch, a reconnection)."""
        if mirror.buffer is None:
            mirror.buffer = pending
        if mirror.loader is None or mirror.loader.done():
            mirror.loader = asyncio.get_running_loop().create_task(self._load(room, mirror), name=f"bus-load:{room}")

    async def _load(self, room: str, mirror: _Mirror) -> None:
        """Read the room from Redis once subscribed, and merge what pub/sub brought meanwhile."""
        backoff = 0.05
        while True:
            try:
                await self._up.wait()
                confirmed = self._confirmed.get(mirror.channel)
                if confirmed is None:
                    confirmed = self._send_subscribe(mirror.channel)
                await asyncio.wait_for(asyncio.shield(confirmed), self._timeout)
                assert mirror.buffer is not None
                full = len(mirror.buffer) >= self._history_size
                reply = await self._load_script(keys=self._keys(room),
                                                args=[int(time.time() * 1_000_000), self._history_size])
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if full:  # messages were dropped from the buffer: what the load read may not reach them
                mirror.buffer = []
                continue
            if self._merge(room, mirror, reply):
                return

    def _merge(self, room: str, mirror: _Mirror, reply: list[Any]) -> bool:
        """Bring the mirror to what a load read, then past it with the buffered messages.

        False when the buffered messages do not follow on (the room moved on in a way only
        another load can tell): the load runs again."""
        epoch, seq = int(reply[0]), int(reply[1])
        cutoff = time.time() - self._history_age
        loaded = [_Message.parse(fields[1]) for _, fields in reversed(reply[2])]  # fields: [b"m", message]
        first = not mirror.loaded.done()
        # Redis still holds what follows this mirror's seq (a Redis restarted from an older copy
        # holds less than the mirror saw, a lost one a new epoch: both only a snapshot can mend).
        covered = epoch == mirror.epoch and seq >= mirror.seq and (
            seq == mirror.seq or bool(loaded and loaded[0].seq <= mirror.seq + 1))
        if not first and covered:
            missed = [message for message in loaded if message.seq > mirror.seq]
            if missed:
                BUS_RESYNCS.labels("filled").inc()
                self._apply(room, mirror, missed)
        else:
            events = [message.event(room) for message in loaded]
            mirror.history.clear()
            mirror.history.extend(event for event in events if event.ts >= cutoff)
            mirror.epoch, mirror.seq = epoch, seq
            raw_state = reply[3]
            mirror.state = {raw_state[i].decode(): orjson.loads(raw_state[i + 1]) for i in range(0, len(raw_state), 2)}
            if not first:
                BUS_RESYNCS.labels("snapshot").inc()
                for listener in mirror.listeners:
                    listener.on_reset()
        buffered, mirror.buffer = mirror.buffer or [], None
        follow = [message for message in buffered if not (message.epoch == mirror.epoch and message.seq <= mirror.seq)]
        for i, message in enumerate(follow):
            if message.epoch != mirror.epoch or message.seq != mirror.seq + 1 + i:
                if i:
                    self._apply(room, mirror, follow[:i])
                mirror.buffer = follow[i:]
                return False
        if follow:
            self._apply(room, mirror, follow)
        if first:
            mirror.loaded.set_result(None)
        return True

    # -- the pub/sub connection -----------------------------------------------------------------

    def _send(self, *args: bytes) -> None:
        """Write a command on the pub/sub connection (its reply comes to the reader).

        Writes start in call order: each task writes before its first suspension."""
        task = asyncio.get_running_loop().create_task(self._write(args))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, args: tuple[bytes, ...]) -> None:
        connection = self._connection
        if connection is None or not connection.is_connected:
            return  # lost: the reconnection subscribes every room again
        try:
            await connection.send_command(*args, check_health=False)
        except (RedisError, OSError) as exc:
            log.debug("bus pub/sub write failed: %s", exc)  # the reader sees the loss and reconnects

    def _send_subscribe(self, channel: bytes) -> asyncio.Future[None]:
        future = self._confirmed[channel] = asyncio.get_running_loop().create_future()
        self._send(b"SUBSCRIBE", channel)
        return future

    async def _run_subscriber(self) -> None:
        backoff = 0.05
        # No retries inside the client: this loop reconnects, with its own backoff.
        pool = ConnectionPool.from_url(self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                                       retry=Retry(NoBackoff(), 0), protocol=2)
        try:
            while True:
                connection = pool.make_connection()
                try:
                    await connection.connect()
                    self._connection = connection
                    self._up.set()
                    BUS_CONNECTED.set(1)
                    backoff = 0.05
                    for room, mirror in self._mirrors.items():
                        self._send_subscribe(mirror.channel)
                        if mirror.loaded.done():
                            self._reload(room, mirror, [])
                    await self._read(connection)
                except (RedisError, OSError) as exc:
                    if self._up.is_set():
                        log.warning("event bus lost Redis (%s); reconnecting", exc)
                finally:
                    was_up = self._up.is_set()
                    self._up.clear()
                    BUS_CONNECTED.set(0)
                    self._connection = None
                    for future in self._confirmed.values():
                        if not future.done():
                            future.set_exception(ConnectionError("pub/sub connection lost"))
                            future.exception()  # retrieved: a load waiting on it retries
                    self._confirmed.clear()
                    with contextlib.suppress(Exception):
                        await connection.disconnect()
                    if was_up:
                        self._reconnects += 1
                        BUS_RECONNECTS.inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
        finally:
            await pool.aclose()

    async def _read(self, connection: AbstractConnection) -> None:
        """Hand messages to the mirrors; a connection that answers nothing, not even a PING, is dropped."""
        waiting_pong = False
        while True:
            reply = await connection.read_response(timeout=self._timeout)
            if reply is None:
                if waiting_pong:
                    raise ConnectionError("Redis did not answer a PING on the pub/sub connection")
                await connection.send_command(b"PING", check_health=False)
                waiting_pong = True
                continue
            waiting_pong = False
            kind = reply[0]
            if kind == b"message":
                self._on_message(reply[1], reply[2])
            elif kind == b"subscribe":
                future = self._confirmed.get(reply[1])
                if future is not None and not future.done():
                    future.set_result(None)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._run_subscriber(), name="bus-subscriber")]
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
        tasks = [*self._tasks, *self._writes, *(m.loader for m in self._mirrors.values() if m.loader is not None)]
        await cancel_and_wait(*tasks)
        self._tasks = []
        await self._batch.close()
        await self._client.aclose()

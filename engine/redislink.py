"""A lean Redis connection for pipelined calls: an asyncio Protocol that writes each batch of
commands with one ``transport.write`` and reads the replies with hiredis as they arrive.

redis-py's asyncio connection costs several times Redis's own work per round trip (a pool checkout,
a StreamReader/Writer, a pure-Python reply parser, an ``asyncio.timeout`` per call). The hot calls
need none of that: their replies come back in the order the commands went, so a FIFO of waiting
commands is enough, and many batches can be in flight on one connection.

Connecting takes everything redis-py's pool was given (``redis://`` or ``rediss://`` with its
``ssl_*`` query arguments, a unix socket, username and password, database), so it reaches the same
Redis, with the same certificate checks, as the rest of the engine's clients.

Timeouts: one timer per connection watches the oldest batch still waiting. When Redis has not
answered it within ``timeout`` the connection fails every command waiting on it with TimeoutError
and closes; the next batch opens a new one (connecting, with AUTH and SELECT, is bounded by
``timeout`` as well). So what waits on a connection is bounded by what callers send within a
timeout or two (and the posts among it by the batcher's ``max_posts``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: One command waiting on a connection: its arguments, the future that answers it, and whether it
#: is a post (see engine.redisbatch).
Entry = tuple[Sequence[Any], "asyncio.Future[Any]", bool]

#: Called with a command and its reply (a value, or the exception that answers it).
Answer = Callable[[Entry, Any], None]


class _ErrorReply(Exception):
    """What hiredis makes of an error reply, turned into redis-py's exception (parse_error) below."""


class LinkSettings:
    """Where and how to connect, taken from a redis-py pool so that both reach Redis the same way."""

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        kwargs = dict(pool.connection_kwargs)
        self.timeout = timeout
        self.path: str | None = None
        self.host: str = kwargs.get("host", "localhost")
        self.port: int = int(kwargs.get("port", 6379))
        self.ssl: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, UnixDomainSocketConnection):
            self.path = kwargs["path"]
        elif issubclass(pool.connection_class, SSLConnection):
            # redis-py builds the context from the URL's ssl_* arguments: the same CA, client
            # certificate, verification mode and host name check as its own connections.
            self.ssl = pool.connection_class(**kwargs).ssl_context.get()
        handshake: list[tuple[Any, ...]] = []
        username, password = kwargs.get("username"), kwargs.get("password")
        if password is not None:
            handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if int(kwargs.get("db") or 0):
            handshake.append(("SELECT", int(kwargs["db"])))
        self.handshake = handshake

    @property
    def address(self) -> str:
        return self.path or f"{self.host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS, or unix socket) connection: the commands written on it wait in order for
    their replies; a connection that breaks or times out fails them all and is not used again."""

    def __init__(self, settings: LinkSettings, answer: Answer) -> None:
        self._settings = settings
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=_ErrorReply)
        self._waiting: deque[Entry] = deque()  # written, reply not read yet, in order
        self._batches: deque[list[float]] = deque()  # [deadline, replies still due] of each written batch
        self._timer: asyncio.TimerHandle | None = None
        self.broken = False

    @property
    def load(self) -> int:
        """Commands written on this connection still waiting for their reply."""
        return len(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport, so no isinstance check).
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(RedisConnectionError(f"Connection to Redis at {self._settings.address} lost"
                                       + (f": {exc}" if exc else "")))

    def write(self, batch: Sequence[Entry]) -> None:
        """Write ``batch`` as one pipeline; its replies (or this connection's failure) answer it."""
        if self.broken or self._transport is None:
            self._fail(batch, RedisConnectionError(f"Connection to Redis at {self._settings.address} lost"))
            return
        try:
            packed = b"".join([hiredis.pack_command(entry[0]) for entry in batch])
        except (TypeError, ValueError) as exc:  # an argument Redis cannot take: these callers only
            self._fail(batch, RedisError(f"cannot send the command: {exc}"))
            return
        self._waiting.extend(batch)
        self._batches.append([asyncio.get_running_loop().time() + self._settings.timeout, len(batch)])
        self._transport.write(packed)
        if self._timer is None:
            self._arm()

    def data_received(self, data: bytes) -> None:
        reader, waiting, batches, answer = self._reader, self._waiting, self._batches, self._answer
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.drop(RedisConnectionError(f"Redis sent what is not a reply: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nothing asked for: the connection cannot be trusted
                self.drop(RedisConnectionError("Redis sent a reply nothing asked for"))
                return
            batch = batches[0]
            batch[1] -= 1
            if not batch[1]:
                batches.popleft()
            if isinstance(reply, _ErrorReply):
                reply = BaseParser.parse_error(str(reply))
            answer(waiting.popleft(), reply)

    def _arm(self) -> None:
        if self._batches and not self.broken:
            self._timer = asyncio.get_running_loop().call_at(self._batches[0][0], self._check)
        else:
            self._timer = None

    def _check(self) -> None:
        """The oldest batch's deadline passed, or that batch was answered and the next one's is due."""
        self._timer = None
        if self._batches and self._batches[0][0] <= asyncio.get_running_loop().time() + 0.001:
            self.drop(RedisTimeoutError(f"Redis at {self._settings.address} did not answer within "
                                        f"{self._settings.timeout:g} s"))
        else:
            self._arm()

    def drop(self, error: RedisError) -> None:
        """Close the connection and fail every command waiting on it with ``error``."""
        self.broken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting = self._waiting, deque()
        self._batches.clear()
        self._fail(waiting, error)

    def _fail(self, entries: Sequence[Entry] | deque[Entry], error: RedisError) -> None:
        for entry in entries:
            self._answer(entry, error)


class RedisLink:
    """One connection at a time carrying batches of commands; replies answer them in order through
    ``answer``. A broken connection is replaced on the next ``send``; batches sent while it is
    being made wait for it (and fail with the connection error if it cannot be made)."""

    def __init__(self, settings: LinkSettings, answer: Answer) -> None:
        self._settings = settings
        self._answer = answer
        self._connection: _Connection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._unsent: list[Entry] = []  # sent while the connection is being made
        self._closed = False

    @property
    def load(self) -> int:
        """Commands on this link still waiting for their reply."""
        return len(self._unsent) + (self._connection.load if self._connection is not None else 0)

    def send(self, batch: list[Entry]) -> None:
        """Write ``batch`` as one pipeline (after connecting, when there is no usable connection)."""
        connection = self._connection
        if connection is not None and not connection.broken:
            connection.write(batch)
        elif self._closed:
            self._fail(batch, RedisConnectionError("the Redis client is closed"))
        else:
            self._connection = None
            self._unsent += batch
            if self._opening is None:
                self._opening = asyncio.get_running_loop().create_task(self._open(), name="redis-link-open")

    async def close(self) -> None:
        """Close for good: waiting commands, and later ones, get ConnectionError."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._connection is not None:
            self._connection.drop(RedisConnectionError("the Redis client is closing"))
            self._connection = None

    async def _open(self) -> None:
        """Connect and authenticate within ``timeout`` (the commands sent meanwhile then wait up to
        another ``timeout`` for their replies), then write what was sent meanwhile."""
        settings = self._settings
        connection = _Connection(settings, self._answer)
        try:
            try:
                await asyncio.wait_for(self._connect(connection), settings.timeout)
            except TimeoutError:
                raise RedisTimeoutError(f"Timeout connecting to Redis at {settings.address}") from None
            except OSError as exc:  # refused, unreachable, a certificate refused
                raise RedisConnectionError(f"Error connecting to Redis at {settings.address}: {exc}") from None
        except BaseException as exc:
            self._opening = None
            closing = RedisConnectionError("the Redis client is closing")
            connection.drop(closing)
            unsent, self._unsent = self._unsent, []
            self._fail(unsent, exc if isinstance(exc, RedisError) else closing)
            if not isinstance(exc, Exception):
                raise
            return
        self._opening = None
        self._connection = connection
        unsent, self._unsent = self._unsent, []
        if unsent:
            connection.write(unsent)

    async def _connect(self, connection: _Connection) -> None:
        settings, loop = self._settings, asyncio.get_running_loop()
        if settings.path is not None:
            await loop.create_unix_connection(lambda: connection, settings.path)
        else:
            await loop.create_connection(lambda: connection, settings.host, settings.port, ssl=settings.ssl,
                                         server_hostname=settings.host if settings.ssl is not None else None)
        if settings.handshake:  # AUTH and SELECT, answered before anything else goes (as their user, in their db)
            futures = [loop.create_future() for _ in settings.handshake]
            connection.write([(command, future, False) for command, future
                              in zip(settings.handshake, futures, strict=True)])
            for future in futures:
                await future

    def _fail(self, entries: Sequence[Entry], error: RedisError) -> None:
        for entry in entries:
            self._answer(entry, error)

"""Automatic pipelining: the Redis calls made during one turn of the event loop go out together.

redis-py spends most of a call's client CPU around the round trip (taking a connection, writing,
parsing, waking the caller), not in Redis: 50 taps calling at once cost several times the CPU of the
same 50 commands written as one pipeline. So the hot calls (the stock store's scripts, the bus's
publish script and direct messages) are handed to a RedisBatcher instead: each call is queued, and
at the end of the loop's current turn everything queued is written as one non-transactional
pipeline (at most ``max_batch`` commands each, more make several), and each caller gets its own
reply or its own error. The pipelines go on ``connections`` lean connections of the batcher's own
(engine.redislink: one write per pipeline, replies parsed by hiredis), made the way ``pool``'s
would be (same URL: TLS, password, database); many pipelines may be in flight on each at once.

What a caller is guaranteed:
- one command's error reply (a script's error, NOSCRIPT, READONLY) fails that caller only, with
  the exception redis-py would raise for it (ResponseError, NoScriptError, ReadOnlyError, ...);
- a connection that breaks or a Redis that does not answer fails every caller still waiting on
  that connection with redis-py's ConnectionError or TimeoutError, and no caller waits longer than
  twice ``timeout`` (up to it for the connection to be made, up to it for the replies); a refused
  connection fails them at once, and the next call connects again;
- ``evalsha`` loads a script Redis does not hold (NOSCRIPT, after a restart or SCRIPT FLUSH) and
  runs that command again, once; callers that meet NOSCRIPT while that script is loading wait for
  the same load (a thousand taps in flight when Redis restarts send one SCRIPT LOAD, not a thousand).

A command whose caller gave up (its answer came too late) may still have run: callers that write
keep their commands idempotent, as for any Redis call that timed out.

``post`` queues a command nobody waits for (a message for other nodes): at most ``max_posts`` wait
or travel at once, more are dropped, and failures are logged once per outage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter
from redis.asyncio import ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from engine.redislink import Entry as _Entry
from engine.redislink import LinkSettings, RedisLink

log = logging.getLogger(__name__)

REDIS_PIPELINES = Counter("livecart_redis_pipelines_total", "Pipelines the hot Redis calls went out in", ["caller"])
REDIS_PIPELINED = Counter("livecart_redis_pipelined_commands_total", "Commands sent in those pipelines", ["caller"])
REDIS_POSTS_LOST = Counter(
    "livecart_redis_posts_lost_total",
    "Commands nobody waited for (messages for other nodes) that Redis did not take, or that found the queue full",
    ["caller"],
)



def _load(link: RedisLink) -> int:
    return link.load


class RedisBatcher:
    """Writes the commands queued during one loop turn as pipelines on ``connections`` connections
    of its own to the Redis ``pool`` connects to (the pool itself is not used for them).

    ``name`` labels the metrics and the log lines (``stock``, ``bus``)."""

    def __init__(self, pool: ConnectionPool, *, name: str, timeout: float, max_batch: int = 100,
                 max_posts: int = 10_000, connections: int = 1) -> None:
        if connections < 1:
            raise ValueError("--redis-pipelines must be at least 1")
        if max_batch < 1:
            raise ValueError("--redis-batch must be at least 1")
        if max_posts < 1:
            raise ValueError("--redis-direct-queue must be at least 1")
        if timeout <= 0:
            raise ValueError("--redis-timeout must be positive")
        self._name = name
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_posts = max_posts
        self._queue: list[_Entry] = []
        self._scheduled = False
        self._closed = False
        self._posts = 0  # posts queued or in a pipeline not yet answered
        self._posts_failing = False
        self._loading: dict[str, asyncio.Future[Any]] = {}  # script SHA -> its SCRIPT LOAD in flight
        settings = LinkSettings(pool, timeout)
        self._links = [RedisLink(settings, self._answer) for _ in range(connections)]
        self._pipelines = REDIS_PIPELINES.labels(name)
        self._commands = REDIS_PIPELINED.labels(name)
        self._lost = REDIS_POSTS_LOST.labels(name)

    async def call(self, *args: Any) -> Any:
        """Send one command with the others of this loop turn and return its reply (raw, as Redis
        gave it); an error reply raises ResponseError, Redis away ConnectionError or TimeoutError."""
        return await self._submit(args)

    def _submit(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future, False))
        self._schedule()
        return future

    async def evalsha(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a registered script by its SHA; when Redis does not hold it, load it and run again."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._submit(command)
        except NoScriptError:
            await self.load(script)
            return await self._submit(command)

    async def load(self, script: AsyncScript) -> None:
        """SCRIPT LOAD ``script``, or wait for the load of it already in flight. A caller that gives
        up does not cancel a load others wait for."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = self._loading[script.sha] = self._submit(("SCRIPT", "LOAD", script.script))
            loading.add_done_callback(functools.partial(self._loaded, script.sha))
        await asyncio.shield(loading)

    def _loaded(self, sha: str, loading: asyncio.Future[Any]) -> None:
        """A load ended: the next NOSCRIPT loads again. Its error is read here, since every caller
        waiting for it may have given up."""
        del self._loading[sha]
        if not loading.cancelled():
            loading.exception()

    def post(self, *args: Any) -> None:
        """Queue a command whose reply nobody awaits; dropped (and counted) when ``max_posts``
        are already waiting."""
        if self._posts >= self._max_posts:
            self._post_failed(f"{self._max_posts} are already waiting")
            return
        self._posts += 1
        self._queue.append((args, asyncio.get_running_loop().create_future(), True))
        self._schedule()

    async def close(self) -> None:
        """Close the connections; callers still waiting, and later ones, get ConnectionError."""
        self._closed = True
        await asyncio.gather(*(link.close() for link in self._links))

    # -- sending --------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Cut what this turn queued into pipelines of at most ``max_batch`` commands and write
        each on the connection with the fewest commands waiting."""
        self._scheduled = False
        queue, self._queue = self._queue, []
        if self._closed:
            for entry in queue:
                self._answer(entry, RedisConnectionError("the Redis client is closed"))
            return
        links = self._links
        for start in range(0, len(queue), self._max_batch):
            batch = queue[start:start + self._max_batch]
            link = links[0] if len(links) == 1 else min(links, key=_load)
            self._pipelines.inc()
            self._commands.inc(len(batch))
            link.send(batch)

    def _answer(self, entry: _Entry, reply: Any) -> None:
        _, future, post = entry
        if future.done():  # its caller gave up (timed out or was cancelled), or a lost post was counted
            return
        if not post:
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
            return
        future.set_result(None)
        self._posts -= 1
        if isinstance(reply, Exception):
            self._post_failed(str(reply))
        elif self._posts_failing:
            self._posts_failing = False
            log.warning("%s: Redis takes messages for other nodes again", self._name)

    def _post_failed(self, reason: str) -> None:
        self._lost.inc()
        if not self._posts_failing:
            self._posts_failing = True
            log.warning("%s: a message for other nodes was lost (%s); further losses are counted in "
                        "livecart_redis_posts_lost_total until Redis takes them again", self._name, reason)


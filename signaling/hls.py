"""Live LL-HLS over HTTP: ``/hls/{room}/index.m3u8``, its init segments, segments and parts.

A playlist request with ``_HLS_msn`` (and ``_HLS_part``) blocks until the playlist holds that
segment (or part), at most ``block_timeout`` seconds (then 503, as RFC 8216bis asks of a server
that cannot produce the part in time: a player retries, where an old playlist would make it ask
again at once). A request for the part ``EXT-X-PRELOAD-HINT`` names blocks until that part is
complete. Waiting requests of the node are bounded (``max_blocked``, then 503). Segments, parts
and init segments never change under their name: cached for a year; a playlist for about a part.
A blocking reload's answer is cached for a target duration: its URL names the part it waited for,
so the same answer is right for every player asking that URL, and a cache in front (nginx's
``proxy_cache_lock``, a CDN's request collapsing) hands one engine answer to all the players that
asked at once, instead of sending them to the engine one after another.

A private room's HLS needs what watching it live needs (a viewer token of the room, as a Bearer
header or ``?token=``); its playlist names every file with that ``?token=``, as players fetch them
without headers, and its answers are ``private`` so no shared cache keeps them.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.digits import parse_uint
from engine.errors import CodedError, shown
from engine.hls import metrics
from engine.hls.playlist import FILE, playlist_bytes
from engine.hls.service import HlsBusy, HlsService
from engine.hls.window import LiveWindow
from engine.rooms import Rooms
from signaling.access import ViewAccess, request_token, viewer_query
from signaling.http import ApiError, coded_status

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
IMMUTABLE = "public, max-age=31536000, immutable"
#: An integer that fits a media sequence or part number.
_NUMBER_DIGITS = 12


@dataclass(slots=True)
class HlsAsk:
    """One request for a room's HLS, as the HTTP front end that read it hands it over (aiohttp's
    routes, or the HLS lane of a player's connection: signaling/hlslane.py)."""

    room: str
    file: str | None  # None: the media playlist
    query: Mapping[str, str]
    token: str | None  # the Bearer token, else ``?token=``


@dataclass(slots=True)
class HlsAnswer:
    """A 200 answer: its body and the two headers that differ between answers."""

    body: bytes | memoryview
    content_type: str
    cache_control: str


#: An answer made at once, or one that has to wait (a blocking reload, a preload hint, a first request).
Answered = HlsAnswer | Awaitable[HlsAnswer]


def _number(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = parse_uint(raw, _NUMBER_DIGITS)
    if value is None:
        raise ApiError("bad_request", f"{name} must be a non-negative integer, not {shown(raw)}")
    return value


class HlsEndpoints:
    """The answers to HLS requests, whichever front end read them.

    ``answer`` makes an answer synchronously whenever nothing has to be waited for (a part that
    exists, a playlist that already holds what was asked), so a front end runs no task for it; it
    returns an awaitable otherwise. Each answer is counted in ``livecart_hls_requests_total`` by
    what was asked (playlist, init, seg, part) and its status. ``want(room)`` asks the media relay
    to carry the room here (an edge pulls it from its origin)."""

    def __init__(self, hls: HlsService, rooms: Rooms, access: ViewAccess, want: Callable[[str], None]) -> None:
        self._hls = hls
        self._rooms = rooms
        self._access = access
        self._want = want
        self._config = hls.config
        self._counters: dict[tuple[str, int], Any] = {}  # (kind, status) -> its series: a few kinds, a few statuses

    def answer(self, ask: HlsAsk) -> Answered:
        match = None if ask.file is None else FILE.fullmatch(ask.file)
        kind = "playlist" if ask.file is None else match.group(1) if match else "other"
        try:
            result = self._playlist(ask) if ask.file is None else self._media_file(ask, match)
        except CodedError as exc:
            self._count(kind, coded_status(exc))
            raise
        if isinstance(result, HlsAnswer):
            self._count(kind, 200)
            return result
        return self._counted(kind, result)

    async def _counted(self, kind: str, pending: Awaitable[HlsAnswer]) -> HlsAnswer:
        try:
            answer = await pending
        except CodedError as exc:
            self._count(kind, coded_status(exc))
            raise
        self._count(kind, 200)
        return answer

    def _count(self, kind: str, status: int) -> None:
        counter = self._counters.get((kind, status))
        if counter is None:
            counter = self._counters[kind, status] = metrics.REQUESTS.labels(kind, str(status))
        counter.inc()

    # --- the room's stream ---

    def _cache(self, room: str, public: str) -> str:
        return "private, " + public.removeprefix("public, ") if self._access.private(room) else public

    def _check_room_to_wait(self) -> None:
        if self._hls.blocked >= self._config.max_blocked:
            raise ApiError("overloaded", f"{self._config.max_blocked} HLS requests wait on this node already "
                           "(--hls-max-blocked)", headers={"Retry-After": "1"})

    @asynccontextmanager
    async def _waiting(self, kind: str) -> AsyncIterator[None]:
        self._check_room_to_wait()
        hls = self._hls
        hls.blocked += 1
        metrics.BLOCKED.inc()
        started = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            hls.blocked -= 1
            metrics.BLOCKED.dec()
            metrics.BLOCK_WAIT.labels(kind).observe(asyncio.get_running_loop().time() - started)

    def _query(self, ask: HlsAsk) -> str:
        """The query the room's file names carry for this request; checks the room exists and the
        request may watch it."""
        if self._rooms.get(ask.room) is None:
            raise ApiError("not_found", f"no room {shown(ask.room)}")
        return viewer_query(self._access, ask.room, ask.token)

    def _live(self, room: str, query: str) -> tuple[str, LiveWindow, str] | None:
        """The room's stream here (id and window, with ``query``) when it has media; None when the
        request has to start it and wait (``_started``)."""
        found = self._hls.stream(room)
        if found is not None and found[1].has_media:
            self._hls.touch(room)
            return (*found, query)
        return None

    async def _started(self, room: str, query: str) -> tuple[str, LiveWindow, str]:
        """The room's stream here, started (or its pull) and waited for: what ``_live`` did not find."""
        hls = self._hls
        self._check_room_to_wait()  # before starting anything for a request that cannot wait
        try:
            hls.touch(room)
        except HlsBusy as exc:
            raise ApiError("overloaded", str(exc), headers={"Retry-After": "5"}) from None
        self._want(room)
        async with self._waiting("first"):
            found = await hls.ready(room, self._config.block_timeout)
        if found is None:
            raise ApiError("overloaded", f"room {room!r} has no live H264 stream here yet", status=503,
                           headers={"Retry-After": "2"})
        return (*found, query)

    async def _until(self, window: LiveWindow, ready: Callable[[], bool], kind: str, what: str) -> None:
        if ready():
            return
        loop = asyncio.get_running_loop()
        timeout = self._config.block_timeout
        deadline = loop.time() + timeout
        async with self._waiting(kind):
            while not ready():
                remaining = deadline - loop.time()
                if remaining <= 0 or not await window.wait_change(remaining):
                    raise ApiError("overloaded", f"{what} is not ready after {timeout:g} s (--hls-block-timeout)",
                                   status=503, headers={"Retry-After": "1"})

    # --- the playlist ---

    def _playlist(self, ask: HlsAsk) -> Answered:
        msn, part = _number(ask.query, "_HLS_msn"), _number(ask.query, "_HLS_part")
        skip = ask.query.get("_HLS_skip")
        if part is not None and msn is None:
            raise ApiError("bad_request", "_HLS_part needs _HLS_msn")
        if skip is not None and skip != "YES":
            raise ApiError("bad_request", f"_HLS_skip must be YES, not {shown(skip)}")
        query = self._query(ask)
        now = self._live(ask.room, query)
        if now is not None and msn is not None:
            self._check_msn(now[1], msn)
        if now is None or (msn is not None and not now[1].reached(msn, part)):
            return self._playlist_later(ask.room, now, query, msn, part, skip is not None)
        return self._playlist_answer(ask.room, now, msn, skip is not None)

    async def _playlist_later(self, room: str, now: tuple[str, LiveWindow, str] | None, query: str,
                              msn: int | None, part: int | None, skip: bool) -> HlsAnswer:
        """``now``: the stream ``_live`` found, if it did."""
        found = now if now is not None else await self._started(room, query)
        window = found[1]
        if msn is not None:
            self._check_msn(window, msn)
            await self._until(window, lambda: window.reached(msn, part), "playlist",
                              f"segment {msn}" + (f" part {part}" if part is not None else ""))
        return self._playlist_answer(room, found, msn, skip)

    @staticmethod
    def _check_msn(window: LiveWindow, msn: int) -> None:
        """Refuses a blocking reload more than two segments past the window's last."""
        last = window.segments[-1].msn
        if msn > last + 2:
            raise ApiError("bad_request", f"_HLS_msn {msn} is more than two segments past the last ({last})")

    def _playlist_answer(self, room: str, found: tuple[str, LiveWindow, str], msn: int | None,
                         skip: bool) -> HlsAnswer:
        stream, window, query = found
        part_seconds = self._config.part_seconds
        if msn is not None:
            control = self._cache(room, f"public, max-age={window.target}")
        else:
            control = self._cache(room, f"public, max-age={max(1, math.floor(part_seconds))}")
        body = playlist_bytes(stream, window, part_seconds, skip=skip, query=query)
        return HlsAnswer(body, PLAYLIST_TYPE, control)

    # --- init segments, segments and parts ---

    def _media_file(self, ask: HlsAsk, match: re.Match[str] | None) -> Answered:
        if match is None:
            raise ApiError("not_found", f"no HLS file {shown(ask.file)}")
        query = self._query(ask)
        now = self._live(ask.room, query)
        if now is not None:
            self._check_stream(ask, match, now)
        if now is None or self._is_hint(match, now[1]):
            return self._media_file_later(ask, match, now, query)
        return self._file_answer(ask, match, now[1])

    async def _media_file_later(self, ask: HlsAsk, match: re.Match[str], now: tuple[str, LiveWindow, str] | None,
                                query: str) -> HlsAnswer:
        """``now``: the stream ``_live`` found (its file checked already), if it did."""
        found = now
        if found is None:
            found = await self._started(ask.room, query)
            self._check_stream(ask, match, found)
        window = found[1]
        if self._is_hint(match, window):  # the preload hint: answered once the part is complete
            number = window.next_part
            await self._until(window, lambda: window.next_part > number, "part", f"part {number}")
        return self._file_answer(ask, match, window)

    @staticmethod
    def _check_stream(ask: HlsAsk, match: re.Match[str], found: tuple[str, LiveWindow, str]) -> None:
        """A file of another stream of the room than the one here is a 404: that stream is over."""
        if match.group(2) != found[0]:
            raise ApiError("not_found", f"stream {match.group(2)} of room {ask.room!r} is over: reload the playlist")

    @staticmethod
    def _is_hint(match: re.Match[str], window: LiveWindow) -> bool:
        """Whether the file is the part the playlist's preload hint names (not made yet)."""
        return match.group(1) == "part" and int(match.group(3)) == window.next_part

    def _file_answer(self, ask: HlsAsk, match: re.Match[str], window: LiveWindow) -> HlsAnswer:
        kind, number = match.group(1), int(match.group(3))
        body: bytes | memoryview | None = None
        content_type = "video/iso.segment"
        if kind == "init":
            body, content_type = window.inits.get(number), "video/mp4"
        elif kind == "seg":
            segment = window.segment(number)
            body = segment.data if segment is not None and segment.complete else None
        else:
            part = window.part(number)
            body = part[0].part_bytes(part[1]) if part is not None else None
        if body is None:
            raise ApiError("not_found", f"no {ask.file} in room {ask.room!r} (not yet made, or older than the window)")
        return HlsAnswer(body, content_type, self._cache(ask.room, IMMUTABLE))


def hls_routes(app: web.Application, endpoints: HlsEndpoints) -> None:
    """The HLS routes through aiohttp: a connection's requests after its first non-HLS one (a player's
    own connections take the HLS lane, signaling/hlslane.py)."""

    async def answer(request: web.Request) -> web.Response:
        ask = HlsAsk(request.match_info["room"], request.match_info.get("file"), request.query,
                     request_token(request))
        result = endpoints.answer(ask)
        found = result if isinstance(result, HlsAnswer) else await result
        return web.Response(body=found.body, content_type=found.content_type,
                            headers={"Cache-Control": found.cache_control})

    app.router.add_get("/hls/{room}/index.m3u8", answer)
    app.router.add_get("/hls/{room}/{file}", answer)

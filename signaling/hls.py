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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from engine.digits import parse_uint
from engine.errors import shown
from engine.hls import metrics
from engine.hls.playlist import FILE, playlist_bytes
from engine.hls.service import HlsBusy, HlsService
from engine.hls.window import LiveWindow
from engine.rooms import Rooms
from signaling.access import ViewAccess, token_query
from signaling.http import STATUS, ApiError

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
IMMUTABLE = "public, max-age=31536000, immutable"
#: The request's file name parsed by ``FILE`` (None when it names no HLS file), kept by ``counted``.
HLS_FILE = web.RequestKey("hls_file", re.Match)
#: An integer that fits a media sequence or part number.
_NUMBER_DIGITS = 12


def _number(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    value = parse_uint(raw, _NUMBER_DIGITS)
    if value is None:
        raise ApiError("bad_request", f"{name} must be a non-negative integer, not {shown(raw)}")
    return value


Handler = Callable[[web.Request], Awaitable[web.Response]]


def counted(handler: Handler) -> Handler:
    """Count each answer in ``livecart_hls_requests_total`` by what was asked (playlist, init, seg, part).

    The file name is parsed here once, for the count and for the handler (``request[HLS_FILE]``)."""
    counters: dict[tuple[str, int], Any] = {}  # (kind, status) -> its series: a few kinds, a few statuses

    def count(kind: str, status: int) -> None:
        counter = counters.get((kind, status))
        if counter is None:
            counter = counters[kind, status] = metrics.REQUESTS.labels(kind, str(status))
        counter.inc()

    async def answer(request: web.Request) -> web.Response:
        match = request[HLS_FILE] = FILE.fullmatch(request.match_info.get("file", ""))
        kind = match.group(1) if match else "playlist" if "file" not in request.match_info else "other"
        try:
            response = await handler(request)
        except ApiError as exc:
            count(kind, exc.status or STATUS.get(exc.code, 400))
            raise
        count(kind, response.status)
        return response

    return answer


def hls_routes(app: web.Application, hls: HlsService, rooms: Rooms, access: ViewAccess,
               want: Callable[[str], None]) -> None:
    """``want(room)`` asks the media relay to carry the room here (an edge pulls it from its origin)."""
    config = hls.config

    def cache(room: str, public: str) -> str:
        return "private, " + public.removeprefix("public, ") if access.private(room) else public

    def check_room_to_wait() -> None:
        if hls.blocked >= config.max_blocked:
            raise ApiError("overloaded", f"{config.max_blocked} HLS requests wait on this node already "
                           "(--hls-max-blocked)", headers={"Retry-After": "1"})

    @asynccontextmanager
    async def waiting(kind: str) -> AsyncIterator[None]:
        check_room_to_wait()
        hls.blocked += 1
        metrics.BLOCKED.inc()
        started = asyncio.get_running_loop().time()
        try:
            yield
        finally:
            hls.blocked -= 1
            metrics.BLOCKED.dec()
            metrics.BLOCK_WAIT.labels(kind).observe(asyncio.get_running_loop().time() - started)

    async def stream_of(room: str, request: web.Request) -> tuple[str, LiveWindow, str]:
        """The room's stream here (id and window) and the query its file names carry; checks the
        request may watch the room, and starts the stream (or its pull) if it may."""
        if rooms.get(room) is None:
            raise ApiError("not_found", f"no room {shown(room)}")
        query = token_query(access, room, request)
        found = hls.stream(room)
        if found is not None and found[1].has_media:
            hls.touch(room)
            return (*found, query)
        check_room_to_wait()  # before starting anything for a request that cannot wait
        try:
            hls.touch(room)
        except HlsBusy as exc:
            raise ApiError("overloaded", str(exc), headers={"Retry-After": "5"}) from None
        want(room)
        async with waiting("first"):
            found = await hls.ready(room, config.block_timeout)
        if found is None:
            raise ApiError("overloaded", f"room {room!r} has no live H264 stream here yet", status=503,
                           headers={"Retry-After": "2"})
        return (*found, query)

    def unavailable(what: str) -> ApiError:
        return ApiError("overloaded", f"{what} is not ready after {config.block_timeout:g} s (--hls-block-timeout)",
                        status=503, headers={"Retry-After": "1"})

    async def until(window: LiveWindow, ready: Callable[[], bool], kind: str, what: str) -> None:
        if ready():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.block_timeout
        async with waiting(kind):
            while not ready():
                remaining = deadline - loop.time()
                if remaining <= 0 or not await window.wait_change(remaining):
                    raise unavailable(what)

    async def playlist(request: web.Request) -> web.Response:
        msn, part = _number(request, "_HLS_msn"), _number(request, "_HLS_part")
        skip = request.query.get("_HLS_skip")
        if part is not None and msn is None:
            raise ApiError("bad_request", "_HLS_part needs _HLS_msn")
        if skip is not None and skip != "YES":
            raise ApiError("bad_request", f"_HLS_skip must be YES, not {shown(skip)}")
        room = request.match_info["room"]
        stream, window, query = await stream_of(room, request)
        if msn is not None:
            last = window.segments[-1].msn
            if msn > last + 2:
                raise ApiError("bad_request", f"_HLS_msn {msn} is more than two segments past the last ({last})")
            await until(window, lambda: window.reached(msn, part), "playlist",
                        f"segment {msn}" + (f" part {part}" if part is not None else ""))
            control = cache(room, f"public, max-age={window.target}")
        else:
            control = cache(room, f"public, max-age={max(1, math.floor(config.part_seconds))}")
        body = playlist_bytes(stream, window, config.part_seconds, skip=skip is not None, query=query)
        return web.Response(body=body, content_type=PLAYLIST_TYPE, headers={"Cache-Control": control})

    async def media_file(request: web.Request) -> web.Response:
        room, name = request.match_info["room"], request.match_info["file"]
        match = request[HLS_FILE]  # parsed by `counted`
        if match is None:
            raise ApiError("not_found", f"no HLS file {shown(name)}")
        kind, stream_id, number = match.group(1), match.group(2), int(match.group(3))
        stream, window, _ = await stream_of(room, request)
        if stream_id != stream:
            raise ApiError("not_found", f"stream {stream_id} of room {room!r} is over: reload the playlist")
        body: bytes | memoryview | None = None
        content_type = "video/iso.segment"
        if kind == "init":
            body, content_type = window.inits.get(number), "video/mp4"
        elif kind == "seg":
            segment = window.segment(number)
            body = segment.data if segment is not None and segment.complete else None
        else:
            if number == window.next_part:  # the preload hint: answered once the part is complete
                await until(window, lambda: window.next_part > number, "part", f"part {number}")
            found = window.part(number)
            body = found[0].part_bytes(found[1]) if found is not None else None
        if body is None:
            raise ApiError("not_found", f"no {name} in room {room!r} (not yet made, or older than the window)")
        return web.Response(body=body, content_type=content_type, headers={"Cache-Control": cache(room, IMMUTABLE)})

    app.router.add_get("/hls/{room}/index.m3u8", counted(playlist))
    app.router.add_get("/hls/{room}/{file}", counted(media_file))

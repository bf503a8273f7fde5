"""Recordings over HTTP: list (one room's, or the newest of every public room for the lobby),
VOD playlist, timeline, segments (with Range), delete.

A private room's recordings are read with the access its live stream needs (signaling.access): a
viewer or host token of the room, sent as ``Authorization: Bearer`` or as ``?token=``. Players
(hls.js, Safari, ffmpeg) fetch a playlist's segments without custom headers, so a private room's
playlist names its segments with the same ``?token=`` (a relative URL: it follows the playlist
wherever it was served from); the links a private room's listing returns carry it too. The
operator's admin key is a header credential that players cannot send: a private room's playlist
and listing read with it name their files with a viewer token minted for the request instead
(valid ``ADMIN_VIEW_SECONDS``). A private room's files are always ``Cache-Control: private``.

With ``--redis-url`` (engine.recording.shared) every node lists every live node's recordings; a
request for the files of a recording another node holds is redirected there (``307`` to that
node's public URL, the query kept, so a ``?token=`` goes along), and a ``DELETE`` is passed on
to that node with the caller's own ``Authorization`` (marked ``X-Livecart-Forwarded``, and
never passed on again, so nodes with stale index entries cannot bounce it). Reads answer ``Access-Control-Allow-Origin:
*`` (they carry no cookie: a token opens them) so a replay page keeps playing across the redirect.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from engine.digits import parse_uint
from engine.errors import shown
from engine.nodes.base import NodeInfo
from engine.recording.service import RecordingService, in_lobby, newest
from engine.recording.shared import IndexUnavailable, SharedRecordings, find
from engine.rooms import Rooms
from engine.urls import PublicUrls
from signaling.access import ASK, ViewAccess, link_query, request_token
from signaling.http import ApiError, Auth, json_response
from signaling.tokens import mint

CONTENT_TYPES = {".mp4": "video/mp4", ".m4s": "video/mp4"}
#: Recordings ``GET /api/recordings`` lists at most (``limit``), and by default: the lobby's past broadcasts.
MAX_RECENT = 100
DEFAULT_RECENT = 12
#: Seconds a ``DELETE`` passed on to the node holding the recording may take.
FORWARD_TIMEOUT = 10.0
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Content-Range, Accept-Ranges"}
#: Seconds the viewer token lasts that a private room's playlist or listing read with the admin key
#: names its files with (players cannot send the admin key's header): a long show's replay.
ADMIN_VIEW_SECONDS = 6 * 3600
#: Marks a ``DELETE`` one node passed on to another: it is never passed on again.
FORWARDED = "X-Livecart-Forwarded"


def recording_path(room: str, recording_id: str) -> str:
    """The path of a recording's API resource (its files, playlist and timeline are under it)."""
    return f"/api/rooms/{room}/recordings/{recording_id}"


def media_links(room: str, recording_id: str, query: str = "",
                link: Callable[[str], str] = lambda path: path) -> dict[str, str]:
    """A recording's playlist and timeline URLs (``link`` makes a path absolute; ``query`` carries
    a private room's token): what its listing entry and its replay page load."""
    base = recording_path(room, recording_id)
    return {"hls": link(f"{base}/index.m3u8") + query, "timeline": link(f"{base}/timeline") + query}


def playlist(info: dict[str, Any], query: str = "") -> str:
    """The HLS playlist (version 7, fMP4) of a recording: VOD once it ended, EVENT while it grows;
    ``query`` (``?token=...`` or empty) is added to every file it names."""
    segments = [s for s in info["segments"] if s.get("duration") is not None]
    target = max((math.ceil(s["duration"]) for s in segments), default=1)
    done = info["state"] != "recording"
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}",
             f"#EXT-X-PLAYLIST-TYPE:{'VOD' if done else 'EVENT'}", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-INDEPENDENT-SEGMENTS", f'#EXT-X-MAP:URI="init.mp4{query}"']
    for segment in segments:
        lines += [f"#EXTINF:{segment['duration']:.6f},", segment["file"] + query]
    if done:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def recording_routes(app: web.Application, recordings: RecordingService, rooms: Rooms, auth: Auth,
                     access: ViewAccess, urls: Callable[[], PublicUrls],
                     shared: SharedRecordings | None = None) -> None:
    def room_of(request: web.Request) -> str:
        room = request.match_info["room"]
        if rooms.get(room) is None:
            raise ApiError("not_found", f"no room {shown(room)}")
        return room

    def readable(request: web.Request) -> str:
        """The room of a request to read its recordings, once the request may: the operator's admin
        key (sent as a header), or what the room's live stream needs (``ViewAccess``; 401/403). It is
        checked before anything is looked up, so a private room tells strangers nothing."""
        room = room_of(request)
        if not auth.is_admin(request):
            access.viewer(room, request_token(request), ASK)
        return room

    def links_query(room: str, request: web.Request) -> str:
        """The query a private room's playlist and listing add to the files they name: the request's
        token, or for the admin key a viewer token minted for them (players send no header)."""
        if auth.is_admin(request) and access.private(room):
            return "?" + urlencode({"token": mint(access.secret, room, "viewer", "admin", ADMIN_VIEW_SECONDS)})
        return link_query(access, room, request_token(request))

    async def held(room: str, recording_id: str) -> tuple[NodeInfo | None, dict[str, Any]]:
        """The node holding a recording (None: this one) and its entry; 404 if no live node holds
        it, 503 while the shared index cannot be read (for one this node does not hold)."""
        try:
            located = await find(recordings, shared, room, recording_id)
        except IndexUnavailable as exc:
            raise ApiError("unavailable", f"{exc}; recording {shown(recording_id)} is not on this node",
                           status=503) from None
        if located is None:
            raise ApiError("not_found", f"no recording {shown(recording_id)} in room {room!r}")
        return located

    async def held_here(room: str, recording_id: str, request: web.Request) -> dict[str, Any]:
        """A recording this node holds; one another node holds is a redirect there."""
        node, info = await held(room, recording_id)
        if node is not None:
            raise web.HTTPTemporaryRedirect(node.http_url.rstrip("/") + request.path_qs, headers=CORS)
        return info

    def public(room: str, info: dict[str, Any], query: str = "") -> dict[str, Any]:
        link = urls().link
        return {"id": info["id"], "started_at": info["started_at"], "duration": info["duration"],
                "bytes": info["bytes"], "state": info["state"], "reason": info.get("reason"),
                "featured": info.get("featured", []),
                "links": {**media_links(room, info["id"], query, link),
                          "replay": link(f"/replay/{room}/{info['id']}") + query}}

    def listed(room_id: str) -> bool:
        """Whether the lobby shows a room's past broadcasts: public rooms only."""
        room = rooms.get(room_id)
        return room is not None and not room.private

    async def recent_recordings(request: web.Request) -> web.Response:
        raw = request.query.get("limit")
        limit = DEFAULT_RECENT if raw is None else parse_uint(raw, 3)
        if limit is None or not 1 <= limit <= MAX_RECENT:
            raise ApiError("bad_request", f"limit must be an integer in [1, {MAX_RECENT}]")
        found = await asyncio.to_thread(recordings.recent, limit, listed)
        if shared is not None:
            found += [info for info in await shared.elsewhere() if in_lobby(info, listed)]
            found = sorted(found, key=newest, reverse=True)[:limit]
        return json_response({"recordings": [
            {**public(info["room"], info), "room": {"id": info["room"], "title": title(info["room"])}}
            for info in found]})

    def title(room_id: str) -> str:
        room = rooms.get(room_id)
        return (room.title if room is not None else "") or room_id

    async def list_recordings(request: web.Request) -> web.Response:
        room = readable(request)
        query = links_query(room, request)
        found = await asyncio.to_thread(recordings.list, room)
        if shared is not None:
            here = {info["id"] for info in found}
            found += [info for info in await shared.elsewhere() if info["room"] == room and info["id"] not in here]
            found.sort(key=newest, reverse=True)
        return json_response({"recordings": [public(room, info, query) for info in found]})

    async def get_playlist(request: web.Request) -> web.Response:
        room = readable(request)
        info = await held_here(room, request.match_info["recording"], request)
        return web.Response(text=playlist(info, links_query(room, request)),
                            content_type="application/vnd.apple.mpegurl", headers=CORS)

    async def get_timeline(request: web.Request) -> web.Response:
        room, recording_id = readable(request), request.match_info["recording"]
        await held_here(room, recording_id, request)
        return json_response({"recording": recording_id, "events": recordings.timeline(room, recording_id) or []},
                             headers=CORS)

    async def get_segment(request: web.Request) -> web.StreamResponse:
        room, recording_id, name = readable(request), request.match_info["recording"], request.match_info["file"]
        path = recordings.file(room, recording_id, name)
        if path is None:  # only now the recording is looked up: here (a missing file), elsewhere, nowhere
            await held_here(room, recording_id, request)
            raise ApiError("not_found", f"no file {shown(name)} in recording {recording_id}")
        # a private room's files never go to a shared cache, whatever credential fetched them
        cache = f"{'private' if access.private(room) else 'public'}, max-age=31536000, immutable"
        return web.FileResponse(path, headers={**CORS, "Content-Type": CONTENT_TYPES[path.suffix],
                                               "Cache-Control": cache})

    async def delete_recording(request: web.Request) -> web.Response:
        room = room_of(request)
        auth.identity(request, room, ("host",))
        recording_id = request.match_info["recording"]
        if not request.headers.get(FORWARDED):
            node, _ = await held(room, recording_id)
            if node is not None:
                return await forward_delete(request, node)
        elif recordings.get(room, recording_id) is None:  # passed on here by a node whose index is stale
            raise ApiError("not_found", f"no recording {shown(recording_id)} in room {room!r} on this node")
        try:
            recordings.delete(room, recording_id)
        except ValueError as exc:
            raise ApiError("conflict", str(exc)) from None
        return json_response({"deleted": recording_id})

    async def forward_delete(request: web.Request, node: NodeInfo) -> web.Response:
        """Pass a ``DELETE`` on to the node holding the recording, with the caller's credentials
        (clients drop ``Authorization`` on a redirect to another origin, so no redirect here)."""
        url = node.http_url.rstrip("/") + request.path_qs
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)) as client, \
                    client.delete(url, headers={"Authorization": request.headers.get("Authorization", ""),
                                             FORWARDED: "1"}) as answer:
                return web.Response(status=answer.status, body=await answer.read(), content_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError("unavailable", f"node {node.id} holding this recording did not answer: {exc}",
                           status=502) from None

    app.router.add_get("/api/recordings", recent_recordings)
    app.router.add_get("/api/rooms/{room}/recordings", list_recordings)
    app.router.add_get("/api/rooms/{room}/recordings/{recording}/index.m3u8", get_playlist)
    app.router.add_get("/api/rooms/{room}/recordings/{recording}/timeline", get_timeline)
    app.router.add_get("/api/rooms/{room}/recordings/{recording}/{file}", get_segment)
    app.router.add_delete("/api/rooms/{room}/recordings/{recording}", delete_recording)

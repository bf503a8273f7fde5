"""Recordings over HTTP: list (one room's, or the newest of every public room for the lobby),
VOD playlist, timeline, segments (with Range), delete.

A private room's recordings are read with the access its live stream needs (signaling.access): a
viewer or host token of the room, sent as ``Authorization: Bearer`` or as ``?token=``. Players
(hls.js, Safari, ffmpeg) fetch a playlist's segments without custom headers, so a private room's
playlist names its segments with the same ``?token=`` (a relative URL: it follows the playlist
wherever it was served from); the links a private room's listing returns carry it too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from engine.digits import parse_uint
from engine.errors import shown
from engine.recording.service import RecordingService
from engine.rooms import Rooms
from engine.urls import PublicUrls
from signaling.access import ViewAccess
from signaling.http import ApiError, Auth, json_response

CONTENT_TYPES = {".mp4": "video/mp4", ".m4s": "video/mp4"}
#: Recordings ``GET /api/recordings`` lists at most (``limit``), and by default: the lobby's past broadcasts.
MAX_RECENT = 100
DEFAULT_RECENT = 12
ASK = "a viewer token of it (Authorization: Bearer <token>, or ?token=<token>)"


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


def request_token(request: web.Request) -> str | None:
    """The token a request carries: its ``Authorization: Bearer``, else its ``?token=`` (what a
    player fetching a playlist's segments, or a page's link, can send)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def token_query(access: ViewAccess, room: str, request: web.Request) -> str:
    """Checks that ``request`` may view ``room``'s recordings (raises 401/403 for a private room
    without a token that may watch it); the query its links and segment URLs carry: the token for
    a private room, nothing for a public one."""
    token = request_token(request)
    access.viewer(room, token, ASK)
    return "?" + urlencode({"token": token}) if token and access.private(room) else ""


def recording_routes(app: web.Application, recordings: RecordingService, rooms: Rooms, auth: Auth,
                     access: ViewAccess, urls: Callable[[], PublicUrls]) -> None:
    def room_of(request: web.Request) -> str:
        room = request.match_info["room"]
        if rooms.get(room) is None:
            raise ApiError("not_found", f"no room {shown(room)}")
        return room

    def viewable(room: str, request: web.Request) -> str:
        """``token_query``, with the operator's admin key (sent as a header) let through too."""
        return "" if auth.is_admin(request) else token_query(access, room, request)

    def found(request: web.Request) -> tuple[str, str, dict[str, Any], str]:
        """The room, recording id, recording and token query of a request to read a recording's
        files: the room's access is checked first, so a private room tells strangers nothing."""
        room = room_of(request)
        query = viewable(room, request)
        recording_id = request.match_info["recording"]
        info = recordings.get(room, recording_id)
        if info is None:
            raise ApiError("not_found", f"no recording {shown(recording_id)} in room {room!r}")
        return room, recording_id, info, query

    def public(room: str, info: dict[str, Any], query: str = "") -> dict[str, Any]:
        base = f"/api/rooms/{room}/recordings/{info['id']}"

        def link(path: str) -> str:
            return urls().link(path) + query

        return {"id": info["id"], "started_at": info["started_at"], "duration": info["duration"],
                "bytes": info["bytes"], "state": info["state"], "reason": info.get("reason"),
                "featured": info.get("featured", []),
                "links": {"hls": link(f"{base}/index.m3u8"), "timeline": link(f"{base}/timeline"),
                          "replay": link(f"/replay/{room}/{info['id']}")}}

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
        return json_response({"recordings": [
            {**public(info["room"], info), "room": {"id": info["room"], "title": title(info["room"])}}
            for info in found]})

    def title(room_id: str) -> str:
        room = rooms.get(room_id)
        return (room.title if room is not None else "") or room_id

    async def list_recordings(request: web.Request) -> web.Response:
        room = room_of(request)
        query = viewable(room, request)
        return json_response({"recordings": [public(room, info, query) for info in recordings.list(room)]})

    async def get_playlist(request: web.Request) -> web.Response:
        _, _, info, query = found(request)
        return web.Response(text=playlist(info, query), content_type="application/vnd.apple.mpegurl")

    async def get_timeline(request: web.Request) -> web.Response:
        room, recording_id, _, _ = found(request)
        return json_response({"recording": recording_id, "events": recordings.timeline(room, recording_id) or []})

    async def get_segment(request: web.Request) -> web.StreamResponse:
        room, recording_id, _, query = found(request)
        name = request.match_info["file"]
        path = recordings.file(room, recording_id, name)
        if path is None:
            raise ApiError("not_found", f"no file {shown(name)} in recording {recording_id}")
        cache = f"{'private' if query else 'public'}, max-age=31536000, immutable"  # a private room's: no shared cache
        return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": cache})

    async def delete_recording(request: web.Request) -> web.Response:
        room = room_of(request)
        auth.identity(request, room, ("host",))
        recording_id = request.match_info["recording"]
        if recordings.get(room, recording_id) is None:
            raise ApiError("not_found", f"no recording {shown(recording_id)} in room {room!r}")
        try:
            recordings.delete(room, recording_id)
        except ValueError as exc:
            raise ApiError("conflict", str(exc)) from None
        return json_response({"deleted": recording_id})

    app.router.add_get("/api/recordings", recent_recordings)
    app.router.add_get("/api/rooms/{room}/recordings", list_recordings)
    app.router.add_get("/api/rooms/{room}/recordings/{recording}/index.m3u8", get_playlist)
    app.router.add_get("/api/rooms/{room}/recordings/{recording}/timeline", get_timeline)
    app.router.add_get("/api/rooms/{room}/recordings/{recording}/{file}", get_segment)
    app.router.add_delete("/api/rooms/{room}/recordings/{recording}", delete_recording)

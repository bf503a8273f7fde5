"""Recordings over HTTP: list (one room's, or the newest of every public room for the lobby),
VOD playlist, timeline, segments (with Range), delete."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine.digits import parse_uint
from engine.errors import shown
from engine.recording.service import RecordingService
from engine.rooms import Rooms
from engine.urls import PublicUrls
from signaling.http import ApiError, Auth, json_response

CONTENT_TYPES = {".mp4": "video/mp4", ".m4s": "video/mp4"}
#: Recordings ``GET /api/recordings`` lists at most (``limit``), and by default: the lobby's past broadcasts.
MAX_RECENT = 100
DEFAULT_RECENT = 12


def playlist(info: dict[str, Any]) -> str:
    """The HLS playlist (version 7, fMP4) of a recording: VOD once it ended, EVENT while it grows."""
    segments = [s for s in info["segments"] if s.get("duration") is not None]
    target = max((math.ceil(s["duration"]) for s in segments), default=1)
    done = info["state"] != "recording"
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}",
             f"#EXT-X-PLAYLIST-TYPE:{'VOD' if done else 'EVENT'}", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-INDEPENDENT-SEGMENTS", '#EXT-X-MAP:URI="init.mp4"']
    for segment in segments:
        lines += [f"#EXTINF:{segment['duration']:.6f},", segment["file"]]
    if done:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def recording_routes(app: web.Application, recordings: RecordingService, rooms: Rooms, auth: Auth,
                     urls: Callable[[], PublicUrls]) -> None:
    def room_of(request: web.Request) -> str:
        room = request.match_info["room"]
        if rooms.get(room) is None:
            raise ApiError("not_found", f"no room {shown(room)}")
        return room

    def found(request: web.Request) -> tuple[str, str, dict[str, Any]]:
        room = room_of(request)
        recording_id = request.match_info["recording"]
        info = recordings.get(room, recording_id)
        if info is None:
            raise ApiError("not_found", f"no recording {shown(recording_id)} in room {room!r}")
        return room, recording_id, info

    def public(room: str, info: dict[str, Any]) -> dict[str, Any]:
        base = f"/api/rooms/{room}/recordings/{info['id']}"
        link = urls().link
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
        return json_response({"recordings": [public(room, info) for info in recordings.list(room)]})

    async def get_playlist(request: web.Request) -> web.Response:
        _, _, info = found(request)
        return web.Response(text=playlist(info), content_type="application/vnd.apple.mpegurl")

    async def get_timeline(request: web.Request) -> web.Response:
        room, recording_id, _ = found(request)
        return json_response({"recording": recording_id, "events": recordings.timeline(room, recording_id) or []})

    async def get_segment(request: web.Request) -> web.StreamResponse:
        room, recording_id, _ = found(request)
        name = request.match_info["file"]
        path = recordings.file(room, recording_id, name)
        if path is None:
            raise ApiError("not_found", f"no file {shown(name)} in recording {recording_id}")
        return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix],
                                               "Cache-Control": "public, max-age=31536000, immutable"})

    async def delete_recording(request: web.Request) -> web.Response:
        room, recording_id, _ = found(request)
        auth.identity(request, room, ("host",))
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

"""The web pages people use: the lobby (``/``), the studio (``/studio/{room}``), the watch page
(``/watch/{room}``) and the replay of a recorded broadcast (``/replay/{room}/{recording}``), plus
their scripts and styles under ``/web/`` (third-party scripts we ship, such as hls.js for the
replay, under ``/web/vendor/``, with their licence beside them).

The pages are plain files in ``overlays/web`` (no build step). Each HTML page carries its
settings inline (``<script id="livecart-config" type="application/json">``) so it needs no extra
round trip before it can open the websocket: the websocket URL (its port is only known once the
engine has started, and its host must be the one the browser used to reach this page), the room
id and title (and for a replay, the recording's playlist and timeline). Unknown rooms and
recordings get a 404 page rather than a page that cannot work.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiohttp import hdrs, web
from yarl import URL

from engine.config import Config
from engine.errors import shown
from engine.media.errors import MediaError
from engine.recording.service import RecordingService
from engine.recording.shared import IndexUnavailable, SharedRecordings, find
from engine.rooms import Rooms
from engine.urls import PublicUrls
from signaling.access import ViewAccess, token_query
from signaling.hostheader import host_of
from signaling.recordings import media_links

WEB_DIR = Path(str(resources.files("overlays") / "web"))
CONFIG_MARK = "__LIVECART_CONFIG__"
HTML = "text/html"
# Pages change with the server; their settings are per request, so never cache them.
NO_STORE = {"Cache-Control": "no-store"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png",
                ".LICENSE": "text/plain"}
PAGES = ("lobby", "studio", "watch", "replay")


def page_ws_url(config: Config, urls: PublicUrls, request: web.Request) -> str:
    """The websocket URL a browser that loaded ``request`` should open.

    With ``public_url`` or ``public_ws_url`` set the operator has said how clients reach us
    (engine.urls); otherwise use the host the browser used for this page (a LAN address or a
    name, not the bind address) with the websocket port, and ``wss`` when the page came over TLS.
    A Host header that is not a hostname or IP literal with an optional port (signaling.hostheader)
    is ignored: the page gets the configured URL, never an error.
    """
    if config.public_url or config.public_ws_url:
        return urls.ws
    host = host_of(request.headers.get(hdrs.HOST))
    if host is None:  # no Host, or one that is not a host name: the configured URL
        return urls.ws
    own = URL(urls.ws)
    return str(URL.build(scheme="wss" if request.secure else "ws", host=host, port=own.port, path=own.path))


def _embed(html: str, settings: dict[str, Any]) -> str:
    # "<" escaped so no value can close the script element it is embedded in.
    return html.replace(CONFIG_MARK, orjson.dumps(settings).decode().replace("<", "\\u003c"))


def static_files() -> dict[str, Path]:
    """The files served under ``/web/``, by their path there (``livecart.js``, ``vendor/hls.min.js``).

    Only these are served: a name is looked up, never joined onto a directory."""
    found = {}
    for folder in (WEB_DIR, WEB_DIR / "vendor"):
        for path in folder.iterdir():
            if path.is_file() and path.suffix in STATIC_TYPES:
                found[path.relative_to(WEB_DIR).as_posix()] = path
    return found


def add_page_routes(app: web.Application, config: Config, rooms: Rooms, urls: Callable[[], PublicUrls],
                    recordings: RecordingService, access: ViewAccess,
                    shared: SharedRecordings | None = None) -> None:
    """Serve the lobby, studio, watch and replay pages and their static files on ``app``.

    ``urls`` is called per request because the ports are chosen when the engine starts
    (port 0 in tests and ephemeral deployments).
    """
    templates = {name: (WEB_DIR / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}
    statics = static_files()

    def render(name: str, request: web.Request, room: dict[str, Any] | None, status: int = 200,
               **more: Any) -> web.Response:
        settings = {"ws": page_ws_url(config, urls(), request), "room": room, **more}
        return web.Response(text=_embed(templates[name], settings), content_type=HTML, status=status,
                            headers=NO_STORE)

    def room_page(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            room = rooms.get(request.match_info["room"])
            if room is None:
                return render("lobby", request, {"id": request.match_info["room"], "missing": True}, status=404)
            return render(name, request, {"id": room.id, "title": room.title or room.id, "private": room.private,
                                          "hls_only": room.hls_only})

        return handler

    async def replay(request: web.Request) -> web.Response:
        """A recording's page; an unknown room or recording gets the lobby with a notice (404), and
        so does a private room's without a viewer token of it in ``?token=`` (401, 403): the page
        then passes that token to the playlist and timeline it loads. A recording this node does not
        hold, while the shared index cannot be read, gets the lobby with a notice too (503)."""
        room_id, recording_id = request.match_info["room"], request.match_info["recording"]
        room = rooms.get(room_id)
        if room is None:
            return render("lobby", request, {"id": room_id, "missing": True}, status=404)
        try:
            query = token_query(access, room.id, request)
        except MediaError as exc:
            return render("lobby", request, {"id": room.id, "refused": exc.message}, status=exc.status)
        try:
            located = await find(recordings, shared, room.id, recording_id)
        except IndexUnavailable:
            unavailable = {"id": room.id, "unavailable": True, "recording": recording_id}
            return render("lobby", request, unavailable, status=503)
        if located is None:
            return render("lobby", request, {"id": room.id, "missing": True, "recording": recording_id}, status=404)
        info = located[1]
        recording = {"id": info["id"], "started_at": info["started_at"], "duration": info["duration"],
                     "state": info["state"], **media_links(room.id, info["id"], query)}
        return render("replay", request, {"id": room.id, "title": room.title or room.id}, recording=recording)

    async def lobby(request: web.Request) -> web.Response:
        return render("lobby", request, None)

    async def static(request: web.Request) -> web.StreamResponse:
        path = statics.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound(reason=f"no file {shown(request.match_info['name'])}")
        # A file response answers If-Modified-Since with 304: hls.js is 600 kB, sent once per browser.
        return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: STATIC_TYPES[path.suffix],
                                               hdrs.CACHE_CONTROL: "no-cache"})

    app.router.add_get("/", lobby)
    app.router.add_get("/studio/{room}", room_page("studio"))
    app.router.add_get("/watch/{room}", room_page("watch"))
    app.router.add_get("/replay/{room}/{recording}", replay)
    app.router.add_get("/web/{name:.+}", static)

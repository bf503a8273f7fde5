"""The web pages people use: the lobby (``/``), the studio (``/studio/{room}``) and the watch page
(``/watch/{room}``), plus their scripts and styles under ``/web/``.

The pages are plain files in ``overlays/web`` (no build step). Each HTML page carries its
settings inline (``<script id="livecart-config" type="application/json">``) so it needs no extra
round trip before it can open the websocket: the websocket URL (its port is only known once the
engine has started, and its host must be the one the browser used to reach this page), the room
id and title. Unknown rooms get a 404 page rather than a page that cannot work.
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
from engine.rooms import Rooms
from engine.urls import PublicUrls
from signaling.hostheader import host_of

WEB_DIR = Path(str(resources.files("overlays") / "web"))
CONFIG_MARK = "__LIVECART_CONFIG__"
HTML = "text/html"
# Pages change with the server; their settings are per request, so never cache them.
NO_STORE = {"Cache-Control": "no-store"}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}


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


def add_page_routes(app: web.Application, config: Config, rooms: Rooms, urls: Callable[[], PublicUrls]) -> None:
    """Serve the lobby, studio and watch pages and their static files on ``app``.

    ``urls`` is called per request because the ports are chosen when the engine starts
    (port 0 in tests and ephemeral deployments).
    """
    templates = {name: (WEB_DIR / f"{name}.html").read_text(encoding="utf-8") for name in ("lobby", "studio", "watch")}
    statics = {p.name: p for p in WEB_DIR.iterdir() if p.suffix in STATIC_TYPES}
    # Third-party scripts we bundle (hls.js, its licence beside it), under /web/vendor/
    vendored = {p.name: p for p in (WEB_DIR / "vendor").iterdir() if p.suffix in STATIC_TYPES}

    def render(name: str, request: web.Request, room: dict[str, Any] | None, status: int = 200) -> web.Response:
        settings = {"ws": page_ws_url(config, urls(), request), "room": room}
        return web.Response(text=_embed(templates[name], settings), content_type=HTML, status=status,
                            headers=NO_STORE)

    def room_page(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            room = rooms.get(request.match_info["room"])
            if room is None:
                return render("lobby", request, {"id": request.match_info["room"], "missing": True}, status=404)
            return render(name, request, {"id": room.id, "title": room.title or room.id})

        return handler

    async def lobby(request: web.Request) -> web.Response:
        return render("lobby", request, None)

    def static_from(files: dict[str, Path]) -> Callable[[web.Request], Any]:
        async def static(request: web.Request) -> web.Response:
            path = files.get(request.match_info["name"])
            if path is None:
                raise web.HTTPNotFound(reason=f"no file {shown(request.match_info['name'])}")
            return web.Response(body=path.read_bytes(), content_type=STATIC_TYPES[path.suffix],
                                headers={"Cache-Control": "no-cache"})

        return static

    app.router.add_get("/", lobby)
    app.router.add_get("/studio/{room}", room_page("studio"))
    app.router.add_get("/watch/{room}", room_page("watch"))
    app.router.add_get("/web/{name}", static_from(statics))
    app.router.add_get("/web/vendor/{name}", static_from(vendored))

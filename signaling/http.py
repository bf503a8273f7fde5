"""The HTTP side (aiohttp): REST control API, health, metrics.

Every error is a status plus ``{"error": {"code": ..., "message": ...}}``, including the
ones aiohttp raises itself (unknown route, wrong method), so API clients parse one shape.
Feature packages add their own routes to the same application (WHIP/WHEP, commerce).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.config import Config
from engine.errors import CodedError, shown
from engine.rooms import Rooms
from engine.urls import PublicUrls
from signaling.ratelimit import BucketTable
from signaling.tokens import ROLES, Identity, TokenError, mint, verify_for_room

log = logging.getLogger(__name__)

STATUS = {
    "bad_request": 400, "unauthorized": 401, "token_expired": 401, "forbidden": 403, "not_found": 404,
    "method_not_allowed": 405, "conflict": 409, "unsupported": 422, "limit_reached": 409,
    "rate_limited": 429, "internal": 500, "overloaded": 503,
    # commerce refusals: the room's state says no
    "sold_out": 409, "full": 409, "sale_not_live": 409, "cart_empty": 409, "too_old": 410,
}


class ApiError(CodedError):
    """A refusal raised by the HTTP layer itself (auth, body parsing)."""

    def __init__(self, code: str, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.headers = headers


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every error answer: ``{"error": {"code", "message"}}``."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(code, message), content_type="application/json",
                        headers=headers)


def coded_status(exc: CodedError) -> int:
    """The HTTP status of a refusal: its own, else its code's."""
    return exc.status or STATUS.get(exc.code, 400)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


@web.middleware
async def errors_as_json(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except CodedError as exc:
        return error_response(exc.code, exc.message, coded_status(exc), headers=getattr(exc, "headers", None))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}  # ours is JSON
        return error_response(code, exc.reason, exc.status, headers=headers)
    except Exception:
        log.exception("request failed: %s %s", request.method, request.path)
        return error_response("internal", "the server failed on this request", 500)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or a 400 that says what is wrong."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError("bad_request", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError("bad_request", "body must be a JSON object")
    return body


def bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError("unauthorized", "send Authorization: Bearer <key or token>")
    return value.strip()


class Auth:
    """Who is calling: the operator (admin key) or a token holder."""

    def __init__(self, secret: str, admin_key: str) -> None:
        self.secret = secret
        self.admin_key = admin_key

    def is_admin(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.lower().startswith("bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), self.admin_key.encode())

    def require_admin(self, request: web.Request) -> None:
        bearer(request)
        if not self.is_admin(request):
            raise ApiError("unauthorized", "this call needs the admin key")

    def identity(self, request: web.Request, room: str, roles: tuple[str, ...]) -> Identity | None:
        """The caller's token identity for ``room`` with one of ``roles``; None for the admin."""
        if self.is_admin(request):
            return None
        try:
            identity = verify_for_room(self.secret, bearer(request), room)
        except TokenError as exc:
            raise ApiError(exc.code, exc.message) from None
        if identity.role not in roles:
            raise ApiError("forbidden", f"this call needs one of the roles {', '.join(roles)}")
        return identity


def room_routes(app: web.Application, config: Config, rooms: Rooms, auth: Auth,
                viewers: Callable[[str], int], urls: Callable[[], PublicUrls],
                health: Callable[[], dict[str, Any]] = dict) -> BucketTable:
    """Rooms, tokens, health and metrics; ``urls`` gives the public URLs for room links, ``health``
    what /healthz tells beside its status. Returns the guest-token limiter (per client address)."""
    guests = BucketTable(config.guest_rate, config.guest_burst, config.limiter_entries)

    def public(room_id: str) -> dict[str, Any]:
        room = rooms.get(room_id)
        if room is None:
            raise ApiError("not_found", f"no room {shown(room_id)}")
        public_urls = urls()
        return {**room.public(), "viewers": viewers(room_id),
                "links": {"watch": public_urls.link(f"/watch/{room_id}"),
                          "studio": public_urls.link(f"/studio/{room_id}"),
                          "whip": public_urls.link(f"/whip/{room_id}"),
                          "whep": public_urls.link(f"/whep/{room_id}"),
                          "hls": public_urls.link(f"/hls/{room_id}/index.m3u8"),
                          "ws": public_urls.ws}}

    async def create_room(request: web.Request) -> web.Response:
        auth.require_admin(request)
        body = await read_json(request)
        room = await rooms.create(body.get("id"), body.get("title") or "", body.get("private", False),
                                  body.get("record", True), body.get("hls_only", False))
        host_token = mint(auth.secret, room.id, "host", "host", config.token_ttl)
        return json_response({"room": public(room.id), "stream_key": room.stream_key, "host_token": host_token},
                             status=201, headers={"Location": f"/api/rooms/{room.id}"})

    async def list_rooms(request: web.Request) -> web.Response:
        return json_response({"rooms": [public(room.id) for room in rooms.list()]})

    async def get_room(request: web.Request) -> web.Response:
        return json_response(public(request.match_info["room"]))

    async def update_room(request: web.Request) -> web.Response:
        """The admin changes any setting; the room's host whether its broadcasts are recorded and whether
        its viewers play HLS only."""
        room_id = request.match_info["room"]
        public(room_id)
        host = auth.identity(request, room_id, ("host",)) is not None
        body = await read_json(request)
        if host and (body.get("title") is not None or body.get("private") is not None):
            raise ApiError("forbidden",
                           "a host may change the room's recording and HLS only; its title and privacy need the "
                           "admin key")
        await rooms.update(room_id, body.get("title"), body.get("private"), body.get("record"), body.get("hls_only"))
        return json_response(public(room_id))

    async def rotate_key(request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        public(room_id)
        auth.identity(request, room_id, ("host",))
        return json_response({"stream_key": (await rooms.rotate_key(room_id)).stream_key})

    async def make_token(request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        public(room_id)
        auth.require_admin(request)
        body = await read_json(request)
        role, sub, ttl = body.get("role", "viewer"), body.get("sub"), body.get("ttl", config.token_ttl)
        if role not in ROLES:
            raise ApiError("bad_request", f"role must be one of {', '.join(ROLES)}")
        if sub is not None and (not isinstance(sub, str) or not 0 < len(sub) <= 128):
            raise ApiError("bad_request", "sub must be a string of 1-128 characters")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= 366 * 86400:
            raise ApiError("bad_request", "ttl must be a positive number of seconds, at most a year")
        return json_response({"token": mint(auth.secret, room_id, role, sub, ttl), "role": role}, status=201)

    async def guest_token(request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        public(room_id)
        if not config.guest_tokens:
            raise ApiError("forbidden", "guest tokens are disabled on this server")
        room = rooms.get(room_id)
        if room is not None and room.private:
            raise ApiError("forbidden", "this room is private: its viewers get their tokens from the shop")
        if not guests.take(request.remote or ""):
            raise ApiError("rate_limited", "too many guest tokens from this address, retry later",
                           headers={"Retry-After": str(max(1, round(1 / max(config.guest_rate, 0.001))))})
        token = mint(auth.secret, room_id, "viewer", None, config.token_ttl, guest=True)
        return json_response({"token": token, "role": "viewer", "ws": urls().ws}, status=201)

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok", **health()})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_post("/api/rooms", create_room)
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_patch("/api/rooms/{room}", update_room)
    app.router.add_post("/api/rooms/{room}/stream-key", rotate_key)
    app.router.add_post("/api/rooms/{room}/tokens", make_token)
    app.router.add_post("/api/rooms/{room}/guest", guest_token)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return guests

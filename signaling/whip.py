"""WHIP (RFC 9725) and WHEP resources, and the websocket's media actions.

Thin HTTP edge over ``engine.media.MediaService``: parse the request, call
the service, map ``MediaError`` to its status and JSON body. Publishers POST
to ``/whip/{room}``, viewers to ``/whep/{room}``; each answer's ``Location``
names the session resource that takes ``PATCH`` (trickle ICE, or an ICE
restart answered ``200`` with the server's new ICE fragment) and ``DELETE``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from engine.media.errors import MediaError
from engine.media.service import MediaService
from engine.nodes.credential import CredentialError, NodeCredentials, is_node_credential
from signaling.access import CHALLENGE, ViewAccess

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
ALLOW_COLLECTION = "OPTIONS, POST"
ALLOW_RESOURCE = "OPTIONS, PATCH, DELETE"
CORS = {
    "Access-Control-Allow-Origin": "*",
    # some clients send the ETag they were given as a request header on PATCH instead of If-Match
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, ETag",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Retry-After",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers={**CORS, **(headers or {})}
    )


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except MediaError as exc:
            return _error(exc.status, exc.code, exc.message, exc.headers)

    return guarded


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _body(request: web.Request, limit: int) -> str:
    """The request's text, refused with 413 past ``limit`` bytes.

    aiohttp reads at most the application's ``client_max_size`` (and keeps what it read, so the
    body-deadline middleware may have read it already); a declared length over ``limit`` is
    refused before anything is read."""
    if request.content_length is not None and request.content_length > limit:
        raise MediaError(413, "too_large", f"body is {request.content_length} bytes; the limit is {limit}")
    data = await request.read()
    if len(data) > limit:
        raise MediaError(413, "too_large", f"body is over the limit of {limit} bytes")
    return data.decode("utf-8", errors="replace")


async def _sdp_body(request: web.Request, limit: int) -> str:
    if request.content_type != SDP:
        raise MediaError(415, "unsupported_media_type", f"Content-Type must be {SDP}")
    return await _body(request, limit)


def _ice_links(media: MediaService) -> list[str]:
    return [f'<{url}>; rel="ice-server"' for url in media.ice_servers()]


def _edge_node(nodes: NodeCredentials | None, room: str, token: str) -> str:
    """The id of the node a WHEP ``POST``'s node credential names; 401 (403 for another room) if it does not verify."""
    if nodes is None:
        raise MediaError(401, "unauthorized", "this node takes no node credentials", CHALLENGE)
    try:
        return nodes.verify(token, room)
    except CredentialError as exc:
        if exc.code == "forbidden":
            raise MediaError(403, exc.code, exc.message) from None
        raise MediaError(401, exc.code, exc.message, CHALLENGE) from None


#: Query parameter marking a WHEP ``POST`` that a full node redirected here: it is not redirected again.
REDIRECTED = "redirected"


def _redirect(request: web.Request, elsewhere: Callable[[], str | None] | None, room: str) -> web.Response | None:
    """A ``307`` to another node's WHEP endpoint for a viewer this node is too full for; None if none takes it."""
    if elsewhere is None or REDIRECTED in request.query:
        return None
    base = elsewhere()
    if base is None:
        return None
    location = f"{base.rstrip('/')}/whep/{quote(room, safe='')}?{REDIRECTED}=1"
    return web.Response(status=307, headers={**CORS, "Location": location})


def add_media_routes(
    app: web.Application, media: MediaService, access: ViewAccess | None = None,
    nodes: NodeCredentials | None = None, elsewhere: Callable[[], str | None] | None = None,
) -> None:
    """Add ``/whip/{room}``, ``/whep/{room}`` and their session resources to ``app``.

    ``access`` reads a WHEP ``POST``'s optional Bearer token (a viewer token) as the user id, so a
    page watching over WHEP beside its websocket counts once in the room's viewers, and refuses
    viewers of a private room without a token of it (none: all rooms open, Bearer ignored).
    ``nodes`` checks the node credential of another node pulling a room as an edge (a Bearer
    token in the node credential format is only ever that: it never falls back to a viewer).
    ``elsewhere`` names another node's public base URL that takes more viewers: a WHEP viewer this
    node is too full for (503 ``overloaded``) is redirected there with ``307`` (at most once: the
    ``Location`` carries ``?redirected=1``), or answered 503 with ``Retry-After`` when none is."""
    for prefix, role in (("whip", "publisher"), ("whep", "viewer")):
        collection = f"/{prefix}/{{room}}"
        resource = f"/{prefix}/{{room}}/{{session}}"

        async def options(request: web.Request, role: str = role) -> web.Response:
            headers = {
                **CORS,
                "Allow": ALLOW_COLLECTION,
                "Accept-Post": SDP,
                "Access-Control-Allow-Methods": ALLOW_COLLECTION,
            }
            response = web.Response(status=204, headers=headers)
            for link in _ice_links(media):
                response.headers.add("Link", link)
            return response

        async def post(request: web.Request, role: str = role, prefix: str = prefix) -> web.Response:
            room = request.match_info["room"]
            sdp = await _sdp_body(request, media.config.max_sdp_bytes)
            bearer = _bearer(request)
            if role == "publisher":
                created = await media.publish(room, bearer, sdp)
            elif bearer is not None and is_node_credential(bearer):
                created = await media.view(room, sdp, edge=_edge_node(nodes, room, bearer))
            else:
                sub = access.viewer(room, bearer) if access is not None else None
                try:
                    created = await media.view(room, sdp, sub=sub)
                except MediaError as exc:
                    redirect = _redirect(request, elsewhere, room) if exc.code == "overloaded" else None
                    if redirect is None:
                        raise
                    return redirect
            headers = {
                **CORS,
                "Content-Type": SDP,
                "Location": f"/{prefix}/{room}/{created.session_id}",
                "ETag": f'"{created.etag}"',
                "Accept-Patch": SDPFRAG,
            }
            response = web.Response(status=201, body=created.sdp.encode(), headers=headers)
            for link in _ice_links(media):
                response.headers.add("Link", link)
            return response

        async def resource_options(request: web.Request) -> web.Response:
            headers = {
                **CORS,
                "Allow": ALLOW_RESOURCE,
                "Accept-Patch": SDPFRAG,
                "Access-Control-Allow-Methods": ALLOW_RESOURCE,
            }
            return web.Response(status=204, headers=headers)

        async def patch(request: web.Request, role: str = role) -> web.Response:
            if request.content_type != SDPFRAG:
                # RFC 5789: a 415 to PATCH says which patch format the resource accepts
                raise MediaError(
                    415, "unsupported_media_type", f"Content-Type must be {SDPFRAG}", {"Accept-Patch": SDPFRAG}
                )
            done = await media.patch(
                role,
                request.match_info["room"],
                request.match_info["session"],
                # Some clients send the ETag they were given back as ``ETag`` instead of ``If-Match``.
                request.headers.get("If-Match") or request.headers.get("ETag"),
                await _body(request, media.config.max_sdp_bytes),
            )
            headers = {**CORS, "ETag": f'"{done.etag}"'}
            if done.sdpfrag is None:  # trickle
                return web.Response(status=204, headers=headers)
            # ICE restart: the server's new credentials and candidates (RFC 9725 section 4.4)
            return web.Response(status=200, body=done.sdpfrag.encode(), headers={**headers, "Content-Type": SDPFRAG})

        async def delete(request: web.Request, role: str = role) -> web.Response:
            await media.end(role, request.match_info["room"], request.match_info["session"])
            return web.Response(status=200, headers=CORS)

        app.router.add_route("OPTIONS", collection, _guard(options))
        app.router.add_route("POST", collection, _guard(post))
        app.router.add_route("OPTIONS", resource, _guard(resource_options))
        app.router.add_route("PATCH", resource, _guard(patch))
        app.router.add_route("DELETE", resource, _guard(delete))


def register_media(channel: Any, media: MediaService, access: ViewAccess | None = None) -> None:
    """Websocket viewers: ``offer`` (the answer SDP comes back in the ack), ``candidate``
    (trickle), and the viewer's peer connection closed with its websocket.

    ``channel`` is a ``signaling.channel.Channel``; ``MediaError`` becomes
    ``ProtocolError`` with the same code and message.
    """
    from signaling.protocol import ProtocolError

    roles = frozenset({"viewer", "host"})

    def viewer_id(session: Any) -> str:
        return f"ws-{session.conn_id}"

    async def on_offer(session: Any, msg: dict) -> dict:
        sdp = msg.get("sdp")
        if not isinstance(sdp, str):
            raise ProtocolError("bad_request", "offer needs an sdp string")
        try:
            if access is not None:
                access.check_identity(session.room, session.identity)
            created = await media.view(session.room, sdp, session_id=viewer_id(session), sub=session.sub)
        except MediaError as exc:
            raise ProtocolError(exc.code, exc.message) from exc
        return {"sdp": created.sdp}

    async def on_candidate(session: Any, msg: dict) -> dict:
        candidate = msg.get("candidate")
        if not isinstance(candidate, str):
            raise ProtocolError("bad_request", "candidate needs a candidate string")
        if candidate:
            try:
                await media.add_candidate(viewer_id(session), candidate, msg.get("sdpMid"))
            except MediaError as exc:
                raise ProtocolError(exc.code, exc.message) from exc
        return {}

    async def on_close(session: Any) -> None:
        await media.close_viewer(viewer_id(session))

    def on_stranded(session_id: str, codecs: dict[str, str]) -> None:
        """A websocket viewer's session ended for a codec change: tell its page to send a new offer."""
        prefix, _, conn_id = session_id.partition("-")
        session = channel.sessions.get(int(conn_id)) if prefix == "ws" and conn_id.isdigit() else None
        if session is not None:
            session.send_now({"type": "media.renegotiate", "reason": "codec_changed", "codecs": codecs})

    channel.actions.register("offer", roles, on_offer)
    channel.actions.register("candidate", roles, on_candidate)
    channel.on_close.append(on_close)
    media.on_stranded = on_stranded

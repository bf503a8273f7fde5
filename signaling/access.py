"""Who may pull a room's media, live or recorded: anyone for a public show, token holders the shop
chose for a private one.

WHEP carries the viewer's token as ``Authorization: Bearer`` (the draft allows it; our watch page sends
it so its WHEP session counts as the same viewer as its websocket); the websocket's
``offer`` uses the token the connection joined with. A private room takes viewer and host tokens for
that room, never a guest token (those are minted for anyone who asks), so a leaked watch URL or a
guest token does not open the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web

from engine.media.errors import MediaError
from engine.rooms import Rooms
from signaling.tokens import Identity, TokenError, verify_for_room

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="livecart"'}
#: How an HTTP request for a room's media (live HLS, recordings, the replay page) carries a token.
ASK = "a viewer token of it (Authorization: Bearer <token>, or ?token=<token>)"


class ViewAccess:
    """Checks a viewer against the room's privacy; raises ``MediaError`` (401/403) when refused."""

    def __init__(self, rooms: Rooms, secret: str) -> None:
        self.rooms = rooms
        self.secret = secret

    def viewer(self, room_id: str, token: str | None, ask: str = "Authorization: Bearer <viewer token>") -> str | None:
        """A request's viewer (WHEP; through ``token_query`` live HLS, a recording's files and its
        replay page): the user id of its token, None without one (anyone may watch a public room).
        A token that does not verify is refused (401) and one for another room is forbidden (403)
        rather than ignored; a private room needs a token that may view it (``ask`` says how the
        request carries one)."""
        if not token:
            if self.private(room_id):
                raise MediaError(401, "unauthorized", f"this room is private: send {ask}", CHALLENGE)
            return None
        try:
            identity = verify_for_room(self.secret, token, room_id)
        except TokenError as exc:
            if exc.code == "forbidden":
                raise MediaError(403, exc.code, exc.message) from None
            raise MediaError(401, exc.code, exc.message, CHALLENGE) from None
        self.check_identity(room_id, identity)
        return identity.sub

    def check_identity(self, room_id: str, identity: Identity) -> None:
        """A verified token (a websocket's, or a WHEP Bearer) may view a private room: not a guest, this room."""
        if not self.private(room_id):
            return
        if identity.room != room_id or identity.role not in ("viewer", "host"):
            raise MediaError(403, "forbidden", "this token is not a viewer token of this room")
        if identity.guest:
            raise MediaError(403, "forbidden", "this room is private: guest tokens may not watch it")

    def private(self, room_id: str) -> bool:
        room = self.rooms.get(room_id)
        return room is not None and room.private


def request_token(request: web.Request) -> str | None:
    """The token a request carries: its ``Authorization: Bearer``, else its ``?token=`` (what a
    player fetching a playlist's segments, or a page's link, can send)."""
    return carried_token(request.headers.get("Authorization", ""), request.query)


def carried_token(authorization: str, query: Mapping[str, str]) -> str | None:
    """``request_token`` from an ``Authorization`` header's value and a request's query."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query.get("token") or None


def token_query(access: ViewAccess, room: str, request: web.Request) -> str:
    """Checks that ``request`` may view ``room``'s media (live HLS, recordings) (raises 401/403 for a private room
    without a token that may watch it); the query its links and segment URLs carry: the token for
    a private room, nothing for a public one."""
    return viewer_query(access, room, request_token(request))


def viewer_query(access: ViewAccess, room: str, token: str | None) -> str:
    """``token_query`` for a request that carries ``token``."""
    access.viewer(room, token, ASK)
    return link_query(access, room, token)


def link_query(access: ViewAccess, room: str, token: str | None) -> str:
    """The query the links of a request let in with ``token`` carry: the token for a private room
    (players fetch a playlist's files without headers), nothing for a public one."""
    return "?" + urlencode({"token": token}) if token and access.private(room) else ""

"""Who may pull a room's media: anyone for a public show, token holders the shop chose for a private one.

WHEP carries the viewer's token as ``Authorization: Bearer`` (the draft allows it); the websocket's
``offer`` uses the token the connection joined with. A private room takes viewer and host tokens for
that room, never a guest token (those are minted for anyone who asks), so a leaked watch URL or a
guest token does not open the stream.
"""

from __future__ import annotations

from engine.media.errors import MediaError
from engine.rooms import Rooms
from signaling.tokens import Identity, TokenError, verify

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="livecart"'}


class ViewAccess:
    """Checks a viewer against the room's privacy; raises ``MediaError`` (401/403) when refused."""

    def __init__(self, rooms: Rooms, secret: str) -> None:
        self.rooms = rooms
        self.secret = secret

    def check_bearer(self, room_id: str, token: str | None) -> None:
        """A WHEP request: open for a public room; a private one needs a Bearer token of the room."""
        if not self._private(room_id):
            return
        if not token:
            raise MediaError(401, "unauthorized", "this room is private: send Authorization: Bearer <viewer token>",
                             CHALLENGE)
        try:
            identity = verify(self.secret, token)
        except TokenError as exc:
            raise MediaError(401, exc.code, exc.message, CHALLENGE) from None
        self.check_identity(room_id, identity)

    def check_identity(self, room_id: str, identity: Identity) -> None:
        """A verified token (a websocket's, or a WHEP Bearer) may view a private room: not a guest, this room."""
        if not self._private(room_id):
            return
        if identity.room != room_id or identity.role not in ("viewer", "host"):
            raise MediaError(403, "forbidden", "this token is not a viewer token of this room")
        if identity.guest:
            raise MediaError(403, "forbidden", "this room is private: guest tokens may not watch it")

    def _private(self, room_id: str) -> bool:
        room = self.rooms.get(room_id)
        return room is not None and room.private

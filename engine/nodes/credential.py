"""Node credentials: how one node proves to another that it may pull a room's media as an edge.

An edge pulls a room from its origin over WHEP like any player, but as a node: its session is
not a person in the room's audience, and it may pull a private room. The credential is an HMAC
(SHA-256) over the room, the pulling node's id and an expiry, keyed with a key derived from the
server secret every node of a deployment shares (``node key = HMAC(secret, "livecart node pull")``),
so only a node holding the secret can make one, and a viewer's JWT (signed with the secret itself,
for another purpose) can never pass for one. It is short-lived (``TTL`` seconds, checked at the
``POST`` only: the session resource it opens is then reached by its own unguessable id).

Format: ``lcnode1.<node id, base64url>.<room, base64url>.<expiry, unix seconds>.<mac, hex>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from engine.errors import CodedError

PREFIX = "lcnode1."
#: Seconds a freshly minted credential stays valid: long enough for one WHEP POST across a cluster.
TTL = 60
#: Seconds of clock difference between nodes tolerated on the expiry.
LEEWAY = 5
_CONTEXT = b"livecart node pull"


class CredentialError(CodedError):
    """A node credential that does not verify: ``unauthorized`` (forged, expired, unreadable) or ``forbidden``."""


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """Mints and checks node credentials with the deployment's shared secret."""

    secret: str

    def _key(self) -> bytes:
        return hmac.new(self.secret.encode(), _CONTEXT, hashlib.sha256).digest()

    def _mac(self, node: str, room: str, expires: int) -> str:
        message = f"{_b64(node)}.{_b64(room)}.{expires}".encode()
        return hmac.new(self._key(), message, hashlib.sha256).hexdigest()

    def mint(self, node: str, room: str, ttl: int = TTL, now: float | None = None) -> str:
        """A credential for ``node`` to pull ``room`` during the next ``ttl`` seconds."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        expires = int(now if now is not None else time.time()) + ttl
        return f"{PREFIX}{_b64(node)}.{_b64(room)}.{expires}.{self._mac(node, room, expires)}"

    def verify(self, token: str, room: str, now: float | None = None) -> str:
        """The pulling node's id if ``token`` is a valid credential for ``room``; ``CredentialError`` otherwise."""
        parts = token.removeprefix(PREFIX).split(".") if token.startswith(PREFIX) else []
        if len(parts) != 4 or not parts[2].isdigit():
            raise CredentialError("unauthorized", "not a node credential")
        node_b64, room_b64, expires_text, mac = parts
        try:
            node, claimed_room = _unb64(node_b64), _unb64(room_b64)
        except ValueError:
            raise CredentialError("unauthorized", "unreadable node credential") from None
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(node, claimed_room, expires)):
            raise CredentialError("unauthorized", "node credential does not verify")
        if expires + LEEWAY < (now if now is not None else time.time()):
            raise CredentialError("unauthorized", "node credential has expired")
        if claimed_room != room:
            raise CredentialError("forbidden", "node credential is for another room")
        return node


def is_node_credential(token: str) -> bool:
    """Whether a Bearer token claims to be a node credential (then only ``NodeCredentials.verify`` may admit it)."""
    return token.startswith(PREFIX)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None

"""Access tokens: standard HS256 JWTs, so a shop's backend can mint them with any JWT library.

Claims: ``room`` (a room id, or ``*`` for a service that reads every room), ``role``
(viewer, host, service), ``sub`` (the user id every cart and order is attributed to)
and ``exp``; tokens the server hands out to anyone (``POST /api/rooms/{room}/guest``) also carry
``guest: true``, so a shop can keep guests out of checkout and private rooms. Nothing in the
engine trusts a user id that did not come from here.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from engine.errors import CodedError

ROLES = ("viewer", "host", "service")


class TokenError(CodedError):
    """Why a token was refused; ``code`` is ``unauthorized``, ``token_expired`` or (another room) ``forbidden``."""


@dataclass(frozen=True, slots=True)
class Identity:
    room: str
    role: str
    sub: str
    exp: float
    guest: bool = False

    def may_enter(self, room: str) -> bool:
        return self.room == room or (self.role == "service" and self.room == "*")


def mint(secret: str, room: str, role: str, sub: str | None = None, ttl: int = 86400,
         guest: bool = False) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    claims = {
        "room": room,
        "role": role,
        "sub": sub or f"{role}-{secrets.token_hex(6)}",
        "exp": int(time.time()) + ttl,
    }
    if guest:
        claims["guest"] = True
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(secret: str, token: str) -> Identity:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "room", "role"]})
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token_expired", "token has expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("unauthorized", f"invalid token: {str(exc)[:80]}") from exc
    room, role, sub = claims.get("room"), claims.get("role"), claims.get("sub")
    if not isinstance(room, str) or role not in ROLES:
        raise TokenError("unauthorized", "token lacks a valid room or role")
    if not isinstance(sub, str) or not sub:
        raise TokenError("unauthorized", "token lacks a subject")
    return Identity(room=room, role=role, sub=sub, exp=float(claims["exp"]), guest=claims.get("guest") is True)


def verify_for_room(secret: str, token: str, room: str) -> Identity:
    """A Bearer token of an HTTP request about ``room``: ``verify``, and ``forbidden`` when it is a
    valid token of another room. Each edge maps the TokenError to its own error kind."""
    identity = verify(secret, token)
    if not identity.may_enter(room):
        raise TokenError("forbidden", "token is not valid for this room")
    return identity

"""The websocket channel's message rules: parsing, validation and error codes, no I/O.

Kept apart from the connection code (websockets' sans-I/O lesson) so every rule can be
tested without a socket and both JSON and msgpack clients get the same checks.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from engine.errors import CodedError

MSGPACK_SUBPROTOCOL = "livecart.msgpack"

# Close codes (RFC 6455 private range 4000-4999 for ours).
CLOSE_RESUMABLE_RESTART = 1012  # server restarting: reconnect with since=last seq
CLOSE_TOO_SLOW = 4008  # the client fell behind: reconnect with since=last seq
CLOSE_BAD_REQUEST = 4400  # a malformed connect URL (e.g. since)
CLOSE_UNAUTHORIZED = 4401  # bad, expired or wrong-room token: get a new token
CLOSE_NOT_FOUND = 4404  # the token's room does not exist
CLOSE_FLOOD = 4429  # far past the message rate limit
CLOSE_FULL = 1013  # the server has no room for more connections: retry later

MAX_REQUEST_ID = 128
MAX_ERROR_MESSAGE = 300  # error messages are cut here, so they never carry a client's input back whole
MAX_SEQ_DIGITS = 20  # a resume seq (microseconds since 1970 fit in 16 digits)


class ProtocolError(CodedError):
    """A client message that cannot be honoured; sent back as ``{"type": "error", ...}``."""


class Refusal(ProtocolError):
    """A connection that may not join: the error is sent, then the socket closes with ``close_code``."""

    def __init__(self, code: str, close_code: int, message: str) -> None:
        super().__init__(code, message)
        self.close_code = close_code


def decode(frame: str | bytes, binary_is_msgpack: bool) -> dict[str, Any]:
    """One client frame to a message dict with a string ``type``."""
    try:
        if isinstance(frame, bytes) and binary_is_msgpack:
            message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        else:
            message = orjson.loads(frame)
    except (orjson.JSONDecodeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise ProtocolError("bad_request", "message is not valid JSON (or msgpack)") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "message must be an object")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("bad_request", "message needs a string 'type'")
    request_id = message.get("id")
    if request_id is not None and not (
        (isinstance(request_id, str) and 0 < len(request_id) <= MAX_REQUEST_ID)
        or (isinstance(request_id, int) and not isinstance(request_id, bool))
    ):
        raise ProtocolError("bad_request", f"'id' must be a string of 1-{MAX_REQUEST_ID} chars or an integer")
    return message


def error(code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + "..."
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        body["re"] = request_id
    return body


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    """A typed field of a message, or a ``bad_request`` naming it."""
    value = message.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
        raise ProtocolError("bad_request", f"'{name}' has the wrong type")
    if not isinstance(value, kind):
        raise ProtocolError("bad_request", f"'{name}' is required and must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)

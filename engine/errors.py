"""The one shape every refusal takes: a stable ``code`` for programs and a ``message`` for people.

HTTP answers it as ``{"error": {"code", "message"}}`` with a status, the websocket as
``{"type": "error", "code", "message", "re"}``; sharing the base lets either edge answer an
error raised anywhere (rooms, tokens, the commerce domain, the media relay) the same way.
"""

from __future__ import annotations


class CodedError(Exception):
    """A refused request. Subclasses may carry an HTTP ``status``; the API maps the rest by code."""

    status: int | None = None

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


SHOWN = 40  # characters of a client's value an error message may quote


def shown(value: object) -> str:
    """A client-supplied value quoted in an error message: at most ``SHOWN`` characters of it.

    Messages are sent back, logged and (for idempotent requests) remembered, so they must never
    grow with the input; a value that is not a string is named by its type only."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    return repr(value[:SHOWN]) + ("..." if len(value) > SHOWN else "")

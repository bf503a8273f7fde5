"""The one error type of the media relay, carrying its HTTP status.

WHIP/WHEP answer ``status`` with ``{"error": {"code", "message"}}``; the
websocket channel answers the same ``code`` and ``message``.
"""

from __future__ import annotations


class MediaError(Exception):
    """A refused media request: HTTP ``status``, stable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

"""The one error type of the media relay, carrying its HTTP status.

WHIP/WHEP answer ``status`` with ``{"error": {"code", "message"}}``; the
websocket channel answers the same ``code`` and ``message``.
"""

from __future__ import annotations

from engine.errors import CodedError


class MediaError(CodedError):
    """A refused media request: HTTP ``status``, stable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.headers = headers or {}

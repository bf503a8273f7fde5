"""The URLs clients are given: room links, the pages' websocket URL, the start-up announcement.

Built with yarl, not by cutting strings at ``:``, so that a public URL without a port
(``https://shop.example.com`` behind a reverse proxy), with a path prefix, or with an IPv6
host (``[2001:db8::1]``) gives URLs that work.

Which websocket URL:

- ``public_ws_url`` when set, as given: the operator's proxy decides where the websocket is
  (for example ``wss://shop.example.com/ws`` routed to the websocket port);
- else, with ``public_url`` set: its host with the websocket port, ``wss`` for ``https``
  (``https://shop.example.com`` gives ``wss://shop.example.com:8081/ws``): the websocket is its
  own listener, so a proxy in front of it serves that port, with TLS when the pages have it;
- else the bind address (``127.0.0.1`` for a wildcard) with the websocket port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from yarl import URL

if TYPE_CHECKING:
    from engine.config import Config

WS_PATH = "/ws"
_WILDCARDS = ("", "0.0.0.0", "::")
_WS_SCHEMES = {"http": "ws", "https": "wss"}


@dataclass(frozen=True, slots=True)
class PublicUrls:
    """Where the HTTP side (``base``, no trailing slash) and the websocket (``ws``) are reached."""

    base: str
    ws: str

    def link(self, path: str) -> str:
        """``path`` (starting with ``/``) under the base URL, keeping the base's path prefix."""
        return self.base + path


def _parse(flag: str, value: str, schemes: tuple[str, ...]) -> URL:
    """``value`` as an absolute URL with one of ``schemes`` and a host, or a ValueError naming ``flag``."""
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"{flag} {value!r} is not a URL: {exc}") from None
    if url.scheme not in schemes or not url.host:
        raise ValueError(f"{flag} {value!r} must be an absolute {' or '.join(schemes)} URL with a host")
    if url.query_string or url.fragment:
        raise ValueError(f"{flag} {value!r} must have no query or fragment")
    return url


def public_urls(config: Config, http_port: int, ws_port: int) -> PublicUrls:
    """The URLs for ``config`` once the engine listens on ``http_port`` and ``ws_port``.

    Raises ValueError for a ``public_url`` or ``public_ws_url`` that is not a usable URL.
    """
    if config.public_url:
        public = _parse("--public-url", config.public_url, ("http", "https"))
        base = public.with_path(public.path.rstrip("/"))
        ws = URL.build(scheme=_WS_SCHEMES[public.scheme], host=public.raw_host, port=ws_port, path=WS_PATH)
    else:
        host = "127.0.0.1" if config.host in _WILDCARDS else config.host
        base = URL.build(scheme="http", host=host, port=http_port)
        ws = URL.build(scheme="ws", host=host, port=ws_port, path=WS_PATH)
    if config.public_ws_url:
        ws = _parse("--public-ws-url", config.public_ws_url, ("ws", "wss"))
    return PublicUrls(base=str(base).rstrip("/"), ws=str(ws))

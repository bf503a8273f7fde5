"""The HTTP access log (``--access-log``): one line per request on the ``livecart.access`` logger.

aiohttp's default format logs the request line with its query string, and studio links carry a
host token and the stream key there (``/studio/demo?token=...&key=...``): this one logs the path
only, never the query or any header.
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


class AccessLogger(AbstractAccessLogger):
    """``REMOTE "METHOD PATH" STATUS BYTES MS`` at info, for aiohttp's ``access_log_class``."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %d %d %.1f ms', request.remote, request.method, request.path,
                         response.status, response.body_length, time * 1000)

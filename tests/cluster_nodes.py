"""Real `livecart serve` processes as nodes of one deployment, reached over HTTP and websockets."""

from __future__ import annotations

import subprocess
from typing import Any

import aiohttp
import websockets

from tests.conftest import Client


class Node:
    """One `livecart serve` process, reached over its HTTP and websocket ports with an admin key."""

    def __init__(self, proc: subprocess.Popen[str], http_port: int, ws_port: int, admin_key: str) -> None:
        self.proc, self.http, self.ws_port = proc, f"http://127.0.0.1:{http_port}", ws_port
        self.admin_key = admin_key

    async def call(self, session: aiohttp.ClientSession, method: str, path: str,
                   body: Any = None) -> tuple[int, Any]:
        async with session.request(method, self.http + path, json=body,
                                   headers={"Authorization": f"Bearer {self.admin_key}"}) as response:
            return response.status, await response.json()

    async def ok(self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(session, method, path, body)
        assert status < 300, answer
        return answer

    async def join(self, session: aiohttp.ClientSession, role: str, sub: str) -> tuple[Client, dict[str, Any]]:
        """A client of ``role`` in the demo room on this node, and its snapshot."""
        minted = await self.ok(session, "POST", "/api/rooms/demo/tokens", {"role": role, "sub": sub})
        client = Client(await websockets.connect(f"ws://127.0.0.1:{self.ws_port}/ws?token={minted['token']}",
                                                 max_queue=None))
        return client, await client.recv_type("snapshot")

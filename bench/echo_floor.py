"""Echo floors of the tap storm: a bare websocket server that answers every message with a small
JSON refusal, the least any server can spend per tap on this machine.

    python bench/echo_floor.py websockets --port 8765
    python bench/echo_floor.py picows --port 8765

Why two: the engine's channel is built on websockets (asyncio), so the websockets floor is what
the same library costs with nothing of the engine's around it; picows (a Cython websocket
protocol with a callback API) shows how much of that is the library itself. bench/tapstorm.py
runs both in the same command as the storm, with the same clients, so the engine's CPU per tap
is compared with floors measured under the same load and the same noise.

Each server accepts any path and query (the storm's clients connect to ``/ws?token=...``),
decodes each text message with orjson as the engine does, and answers with the engine's
refusal shape, ``{"type":"error","code":"sold_out","message":...,"re":ID}``, a text frame of
~80 bytes that the storm's clients time by ``re`` like any tap answer. No compression, uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import orjson
import uvloop

MESSAGE = "this sale is sold out"


def answer(payload: bytes | str | memoryview) -> bytes:
    """The reply to one message: its id read back, in a refusal like the engine's."""
    message = orjson.loads(payload)
    request_id = message.get("id") if isinstance(message, dict) else None
    return orjson.dumps({"type": "error", "code": "sold_out", "message": MESSAGE, "re": request_id})


async def serve_websockets(host: str, port: int, stop: asyncio.Event) -> None:
    """websockets' asyncio server, with the engine channel's settings (no compression, max_queue 16)."""
    from websockets.asyncio.server import ServerConnection, serve

    async def handle(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(answer(message), text=True)

    async with serve(handle, host, port, compression=None, max_queue=16):
        print(f"websockets echo on ws://{host}:{port}/", flush=True)
        await stop.wait()


async def serve_picows(host: str, port: int, stop: asyncio.Event) -> None:
    """picows' server: one listener object per connection, called for every frame."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

    class Echo(WSListener):  # type: ignore[misc]  # picows ships no type stubs
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                transport.send(WSMsgType.TEXT, answer(frame.get_payload_as_memoryview()))
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

    def listener(request: WSUpgradeRequest) -> Any:
        return Echo()

    server = await ws_create_server(listener, host, port)
    print(f"picows echo on ws://{host}:{port}/", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


SERVERS = {"websockets": serve_websockets, "picows": serve_picows}


async def main(kind: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await SERVERS[kind](host, port, stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(main(args.kind, args.host, args.port))

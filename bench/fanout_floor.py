"""The fan-out floor: a bare websockets server that only broadcasts what the publisher sends.

Same library, event loop (uvloop), port and path (``/ws``) as the engine's channel, no
compression, no auth, no seq, no history, no JSON: each message from the publisher
(``/ws?publisher=1``) goes to every other connection with one ``websockets.broadcast``.
Whatever the engine spends per delivery above this is the price of its full path.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(host: str, port: int) -> None:
    viewers: set[ServerConnection] = set()

    async def handle(connection: ServerConnection) -> None:
        assert connection.request is not None
        if "publisher=1" in connection.request.path:
            async for message in connection:
                broadcast(viewers, message)
            return
        viewers.add(connection)
        try:
            await connection.wait_closed()
        finally:
            viewers.discard(connection)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handle, host, port, compression=None, max_queue=16):
        print(f"floor broadcasting on ws://{host}:{port}/ws", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))

"""Raw websocket clients for attack tests: real sockets that do what a library client never would
(stop reading, trickle bytes, pick their own source address)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct


async def raw_socket(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    """A connected non-blocking TCP socket from ``source`` (any 127.0.0.0/8 address works on Linux)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def upgrade(query: str) -> bytes:
    return (f"GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def ws_client(port: int, token: str, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    """A websocket client after its handshake (101 checked); it reads nothing more unless told to."""
    loop = asyncio.get_running_loop()
    sock = await raw_socket(port, source, rcvbuf)
    await loop.sock_sendall(sock, upgrade(f"token={token}"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), 5)  # byte by byte: leave the frames unread
    assert b" 101 " in head.split(b"\r\n")[0], head
    return sock


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 section 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Unmasked server frames parsed from ``data``: (opcode, payload) pairs and the unparsed rest."""
    frames = []
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if n == 126:
            if len(data) < 4:
                break
            n, offset = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + n:
            break
        frames.append((opcode, data[offset:offset + n]))
        data = data[offset + n:]
    return frames, data


async def read_until_close(sock: socket.socket, timeout: float = 10.0) -> tuple[int, int]:
    """Read frames until the server's close frame: (close code, frames before it)."""
    loop = asyncio.get_running_loop()
    rest, count = b"", 0
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout)
        assert chunk, "the connection ended without a close frame"
        frames, rest = server_frames(rest + chunk)
        for opcode, payload in frames:
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], count
            count += 1

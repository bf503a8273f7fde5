"""The HLS lane (signaling/hlslane.py) over raw sockets, as players and odd clients use a connection.

A connection whose first request is ``GET /hls/...`` is answered by the lane; the tests check what
such a connection gets (pipelined answers in order, the headers a cache needs, blocking reloads),
that it passes to aiohttp the moment it asks for something else, and the lane's bounds: a client
that never reads, a head too long or too slow, an idle connection, HTTP/1.0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hls_playlists import parse
from media_peers import broadcast
from test_hls import get, hls_config, sample

from signaling.hls import HlsAnswer, HlsAsk
from signaling.hlslane import BATCH, HlsLanes
from tests.conftest import running

Answer = tuple[int, dict[str, str], bytes]


async def connect(port: int, receive_buffer: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so the window the server sees stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


def request(path: str, *headers: str, version: str = "HTTP/1.1") -> bytes:
    return "\r\n".join((f"GET {path} {version}", "Host: 127.0.0.1", *headers, "", "")).encode()


async def answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, body


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (reading what it still sends)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    return True


async def live_room(engine: Any, http: aiohttp.ClientSession, video: Any, opus: Any) -> tuple[Any, Any]:
    """The demo room published, with a playlist that lists a complete segment; (publisher, playlist)."""
    publisher = await broadcast(engine, http, video, opus)
    url = f"http://127.0.0.1:{engine.http_port}/hls/demo/index.m3u8"
    async with asyncio.timeout(20):
        while True:
            response, body = await get(http, url)
            playlist = parse(body.decode())
            if response.status == 200 and any(segment.uri for segment in playlist.segments):
                return publisher, playlist
            await asyncio.sleep(0.2)


async def test_a_players_connection_gets_pipelined_answers_in_order_then_aiohttp_takes_it_over(
        tmp_path: Path, h264_gop30, opus, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="livecart.access")
    async with running(hls_config(tmp_path, access_log=True)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        publisher, playlist = await live_room(engine, http, h264_gop30, opus)
        before = await sample(http, base)
        part = [listed for segment in playlist.segments for listed in segment.parts][-1].uri
        init = playlist.segments[0].map

        reader, writer = await connect(engine.http_port)
        writer.write(request("/hls/demo/index.m3u8") + request(f"/hls/demo/{part}") + request(f"/hls/demo/{init}")
                     + request("/hls/demo/part-nothing-1.m4s"))
        listed, got_part, got_init, missing = [await answer(reader) for _ in range(4)]
        assert listed[0] == 200 and listed[1]["content-type"] == "application/vnd.apple.mpegurl"
        assert listed[1]["cache-control"] == "public, max-age=1" and listed[1]["date"].endswith("GMT")
        assert parse(listed[2].decode()).segments
        assert got_part[0] == 200 and got_part[1]["content-type"] == "video/iso.segment" and got_part[2]
        assert got_part[1]["cache-control"] == "public, max-age=31536000, immutable"
        assert got_part[2] == (await get(http, f"{base}/hls/demo/{part}"))[1]  # the bytes aiohttp's route serves
        assert got_init[0] == 200 and got_init[1]["content-type"] == "video/mp4"
        assert missing[0] == 404 and missing[1]["content-type"] == "application/json" and b"not_found" in missing[2]

        # a blocking reload for the next part waits on this connection, then answers with that part listed
        msn, next_part = parse(listed[2].decode()).next_request()
        writer.write(request(f"/hls/demo/index.m3u8?_HLS_msn={msn}&_HLS_part={next_part}&_HLS_skip=YES"))
        reloaded = await answer(reader)
        assert reloaded[0] == 200 and reloaded[1]["cache-control"].startswith("public, max-age=")
        assert any(listed.msn > msn or (listed.msn == msn and len(listed.parts) > next_part)
                   for listed in parse(reloaded[2].decode()).segments)

        # the same connection asks for the API: aiohttp answers it, and every request after it
        writer.write(request("/api/rooms/demo") + request("/hls/demo/index.m3u8"))
        room, again = await answer(reader), await answer(reader)
        assert room[0] == 200 and b'"demo"' in room[2]
        assert again[0] == 200 and again[1]["content-type"] == "application/vnd.apple.mpegurl"
        writer.close()

        after = await sample(http, base)
        counted = {kind: after.get(f'livecart_hls_requests_total{{kind="{kind}",status="200"}}', 0)
                   - before.get(f'livecart_hls_requests_total{{kind="{kind}",status="200"}}', 0)
                   for kind in ("playlist", "part", "init")}
        assert counted == {"playlist": 3, "part": 2, "init": 1}, counted
        assert '"GET /hls/demo/index.m3u8" 200' in caplog.text  # the access log has the lane's requests
        assert "token" not in caplog.text
        await http.delete(base + publisher.location)
        await publisher.close()


async def test_a_player_that_never_reads_gets_nothing_more_queued(tmp_path: Path, h264_gop30, opus) -> None:
    """Pipelined requests from a client that does not read its answers: the lane stops answering
    (and reading) once the socket and the transport's buffer are full, and resumes when it reads."""
    async with running(hls_config(tmp_path, http_read_timeout=1.0)) as engine, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{engine.http_port}"
        publisher, playlist = await live_room(engine, http, h264_gop30, opus)
        segment = next(segment.uri for segment in playlist.segments if segment.uri)
        size = len((await get(http, f"{base}/hls/demo/{segment}"))[1])
        count = min(20_000, 16_000_000 // size + 200)  # far more than the socket buffers on both sides hold
        before = await sample(http, base)

        reader, writer = await connect(engine.http_port, receive_buffer=4096)
        writer.write(request(f"/hls/demo/{segment}") * count)  # not drained: the server may stop reading
        await asyncio.sleep(2.0)  # past --http-read-timeout: complete heads waiting their turn are not late
        stalled = await sample(http, base)
        answered = stalled['livecart_hls_requests_total{kind="seg",status="200"}'] - before[
            'livecart_hls_requests_total{kind="seg",status="200"}']
        assert 0 < answered < count / 2, (answered, count, size)
        assert (await get(http, f"{base}/healthz"))[0].status == 200  # the node serves others meanwhile

        for _ in range(count):  # the client reads: every request is answered, in order
            status, _, body = await answer(reader)
            assert status == 200 and len(body) == size
        writer.close()
        await http.delete(base + publisher.location)
        await publisher.close()


async def test_heads_too_long_or_too_slow_idle_connections_and_http_1_0(tmp_path: Path) -> None:
    config = hls_config(tmp_path, http_read_timeout=1.0, keepalive_timeout=1.5)
    async with running(config) as engine:
        port = engine.http_port
        # HTTP/1.0 without keep-alive: one answer, then the connection closes
        reader, writer = await connect(port)
        writer.write(request("/hls/nowhere/index.m3u8", version="HTTP/1.0"))
        status, headers, body = await answer(reader)
        assert status == 404 and headers["connection"] == "close" and b"not_found" in body
        assert await closed(reader, 2)

        # a close anywhere in Connection wins; a fragment is not part of the path
        reader, writer = await connect(port)
        writer.write(request("/hls/nowhere/index.m3u8#frag", "Connection: close", "Connection: keep-alive"))
        status, headers, body = await answer(reader)
        assert status == 404 and headers["connection"] == "close" and b"no room 'nowhere'" in body
        assert await closed(reader, 2)

        # HTTP/1.0 with keep-alive: kept, until idle for the keep-alive timeout
        reader, writer = await connect(port)
        for _ in range(2):
            writer.write(request("/hls/nowhere/index.m3u8", "Connection: keep-alive", version="HTTP/1.0"))
            status, headers, _ = await answer(reader)
            assert status == 404 and headers["connection"] == "keep-alive"
        assert not await closed(reader, 0.5)
        assert await closed(reader, 3)

        # a head longer than the lane reads goes to aiohttp, whose limits answer it
        reader, writer = await connect(port)
        writer.write(b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nX-Padding: " + b"a" * 20_000)
        status, headers, body = await answer(reader)
        assert status in (400, 431), (status, body)
        assert await closed(reader, 2)

        # a head split so that its end straddles the bytes the lane and the guard saw: still 408
        reader, writer = await connect(port)
        for piece in (b"GET /hls/nowhere/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r",
                      b"\nGET /hls/nowhere/index.m3u8 HTTP/1.1\r\n", b"\nX"):
            writer.write(piece)
            await asyncio.sleep(0.1)
        assert (await answer(reader))[0] == 404
        status, _, body = await answer(reader)
        assert status == 408 and b"request_timeout" in body

        # a head that never ends, first on a connection or after an answered request: 408 (the guard's deadline)
        for first in (b"", request("/hls/nowhere/index.m3u8")):
            reader, writer = await connect(port)
            writer.write(first + b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            if first:
                assert (await answer(reader))[0] == 404
            status, _, body = await answer(reader)
            assert status == 408 and b"request_timeout" in body
            assert await closed(reader, 2)

        # a head the lane does not take goes to aiohttp, which answers malformed ones itself: a body
        # hidden behind a bare LF, CR or NUL is never read as a request of its own
        hidden = b"GET /hls/smuggled/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"
        for separator in (b"\n", b"\r", b"\x00"):
            reader, writer = await connect(port)
            writer.write(b"GET /hls/nowhere/index.m3u8 HTTP/1.1\r\nHost: x" + separator
                         + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden)
            status, _, body = await answer(reader)
            assert status == 400, (separator, status, body)
            assert await closed(reader, 2)  # and no second answer before the close
        for odd, expected in ((b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nBroken header\r\n\r\n", 400),
                              (b"HEAD /hls/nowhere/index.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                              (b"GET /hls/a/b/c HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                              (b"GET /hls/nowhere/index.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", 404)):
            reader, writer = await connect(port)
            writer.write(odd)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            assert int(head.split(b" ")[1]) == expected, (odd, head)
            writer.close()


class Transport:
    """What the lane uses of a transport, keeping what it writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = self.aborted = False

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def abort(self) -> None:
        self.aborted = True

    def writelines(self, parts: tuple[bytes, bytes]) -> None:
        self.written.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Host:
    """The connection's guard, counting what the lane tells it."""

    def __init__(self) -> None:
        self.started = self.heads = 0
        self.handed: list[bytes] = []

    def request_started(self) -> None:
        self.started += 1

    def head_started(self) -> None:
        self.heads += 1

    def hand_over(self, data: bytes) -> None:
        self.handed.append(data)


class Endpoints:
    """Answers every request at once with its file name."""

    def answer(self, ask: HlsAsk) -> HlsAnswer:
        return HlsAnswer(str(ask.file).encode(), "video/iso.segment", "public, max-age=1")


def lane_of(transport: Transport, host: Host, keepalive: float = 60.0) -> Any:
    return HlsLanes(Endpoints(), keepalive, None).lane(transport, host)  # type: ignore[arg-type]


async def test_pipelined_requests_are_answered_in_batches_between_which_the_loop_serves_others() -> None:
    transport, host = Transport(), Host()
    lane = lane_of(transport, host)
    lane.received(b"".join(request(f"/hls/demo/part-a-{i}.m4s") for i in range(10 * BATCH)))
    assert len(transport.written) == BATCH  # the rest after other callbacks of the loop
    turns = 0
    while len(transport.written) < 10 * BATCH:
        await asyncio.sleep(0)
        turns += 1
    assert turns >= 9
    assert [answer.rsplit(b"\r\n\r\n", 1)[1] for answer in transport.written] == [
        f"part-a-{i}.m4s".encode() for i in range(10 * BATCH)]
    assert host.started == 10 * BATCH and host.heads == 0 and not host.handed
    lane.lost()


async def test_complete_heads_that_wait_for_the_client_to_read_run_no_head_deadline() -> None:
    transport, host = Transport(), Host()
    lane = lane_of(transport, host)
    lane.pause_writing()  # the client does not read
    lane.received(request("/hls/demo/part-a-1.m4s") * 3 + b"GET /hls/demo/pa")
    assert transport.written == [] and host.heads == 0
    lane.resume_writing()
    assert len(transport.written) == 3 and host.heads == 1  # now the partial head's deadline runs
    lane.received(b"rt-a-4.m4s HTTP/1.1\r\nHost: x\r\n\r\nPOST /api/rooms HTTP/1.1\r\n")
    assert len(transport.written) == 4 and host.handed == [b"POST /api/rooms HTTP/1.1\r\n"]


async def test_a_client_that_ends_its_input_gets_every_request_it_sent_answered_then_the_close() -> None:
    transport, host = Transport(), Host()
    lane = lane_of(transport, host)
    lane.pause_writing()
    lane.received(request("/hls/demo/part-a-1.m4s") * (BATCH + 4) + b"GET /hls/demo/part")  # the last one cut off
    assert lane.eof() is True and not transport.closed  # the answers are still to come
    lane.resume_writing()
    assert len(transport.written) == BATCH and not transport.closed
    while not transport.closed:
        await asyncio.sleep(0)
    assert len(transport.written) == BATCH + 4


async def test_a_client_that_takes_no_answers_is_cut_after_the_keepalive_timeout_whatever_it_sends() -> None:
    transport, host = Transport(), Host()
    lane = lane_of(transport, host, keepalive=0.5)
    lane.received(request("/hls/demo/part-a-1.m4s"))
    lane.pause_writing()  # its answers wait in the send buffer: it reads nothing
    async with asyncio.timeout(5):
        while not transport.aborted:  # a byte now and then does not keep it open
            lane.received(b"G")
            await asyncio.sleep(0.1)
    assert not transport.closed and len(transport.written) == 1  # cut, not closed after a drain that never comes
    lane.lost()

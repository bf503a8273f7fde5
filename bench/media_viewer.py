"""Cheap WHEP viewers for the fan-out bench: one process runs many, none decodes.

Each viewer is a real aiortc peer connection (ICE, DTLS, SRTP keys, WHEP
``POST``), but once its ICE sockets exist their datagram handler is wrapped:
SRTP packets are recorded from their RTP header, which SRTP leaves in clear
(payload type, marker, sequence number, timestamp), and never decrypted or
handed to aiortc's receiver. STUN (consent checks), DTLS and RTCP still go to
aiortc. A viewer then costs a few microseconds per packet, so a handful of
processes on one core can take the output of a server that owns another.
The same wrapper (``record_headers``) can also pass RTP on to aiortc
(``drop=False``): the cascade bench's measuring viewers record the headers
and still receive their frames through aiortc (bench/media_cascade.py).

Per viewer the output holds, per RTP timestamp of each kind, the first and
last arrival (monotonic, shared by every process on the machine), packets,
payload bytes (packet length minus RTP header; the SRTP tag is still
included) and whether the marker packet came; plus when it asked to join.

    python bench/media_viewer.py --base http://127.0.0.1:8080 --room demo \\
        --first 0 --stride 4 --count 25 --join-interval 0.1 --out out.json

It prints ``ready`` once imported, then reads one JSON line from stdin,
``{"join_at": T, "stop_at": T2}`` (monotonic times): viewer ``i`` (global
index) joins at ``T + i * join_interval``; at ``T2`` the process writes its
records and exits. ``T2`` may be null: it then comes on a second line,
``{"stop_at": T2}`` (the cascade bench knows when its last window ends only
once the windows before it, whose starts wait on the nodes, have run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from engine.media import aiortc_compat

LOOPBACK = ("127.0.0.1",)


@dataclass
class Record:
    """What one viewer saw."""

    index: int
    asked: float = 0.0
    answered: float = 0.0
    status: int = 0
    error: str = ""
    first_frame: float = 0.0
    # RTP timestamp -> [first arrival, last arrival, packets, bytes, marker seen], video and audio
    frames: dict[int, list[float]] = field(default_factory=dict)
    audio: dict[int, list[float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "asked": self.asked,
            "answered": self.answered,
            "status": self.status,
            "error": self.error,
            "first_frame": self.first_frame,
            "frames": [[ts, *values] for ts, values in self.frames.items()],
            "audio": [[ts, *values] for ts, values in self.audio.items()],
        }


def video_payload_types(answer: str) -> frozenset[int]:
    """Payload types of the answer's video section (H264 and its RTX)."""
    section = answer.split("m=video ", 1)[1].split("\r\nm=", 1)[0]
    return frozenset(int(pt) for pt in section.split("\r\n", 1)[0].split()[2:])


def _header_reader(record: Record, video_pts: set[int], original: Any, drop: bool) -> Any:
    """A ``datagram_received`` that records RTP headers and passes everything else on (RTP too
    unless ``drop``)."""
    video, audio = record.frames, record.audio
    monotonic = time.monotonic

    def received(data: bytes, addr: Any) -> None:
        first, second = data[0], data[1]
        if 127 < first < 192 and not 191 < second < 224:
            now = monotonic()
            is_video = (second & 0x7F) in video_pts
            header = 12 + 4 * (first & 0x0F)
            if first & 0x10:
                header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
            ts = int.from_bytes(data[4:8], "big")
            frames = video if is_video else audio
            entry = frames.get(ts)
            if entry is None:
                entry = frames[ts] = [now, now, 0, 0, 0]
            entry[1] = now
            entry[2] += 1
            entry[3] += len(data) - header
            if second & 0x80:
                entry[4] = 1
                if is_video and not record.first_frame:
                    record.first_frame = now
            if drop:
                return
        original(data, addr)

    return received


def record_headers(pc: RTCPeerConnection, record: Record, video_pts: set[int], drop: bool) -> None:
    """Record the RTP headers ``pc``'s ICE sockets receive from now on (its local description is set;
    ``video_pts`` is filled from the answer), and with ``drop`` keep RTP from aiortc."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        for protocol in connection._protocols:
            protocol.datagram_received = _header_reader(record, video_pts, protocol.datagram_received, drop)


async def view(http: aiohttp.ClientSession, url: str, record: Record, rcvbuf: int) -> RTCPeerConnection:
    """Join over WHEP and start recording headers; returns the connection (kept open by the caller)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in ("audio", "video"):
        pc.addTransceiver(kind, direction="recvonly")
    aiortc_compat.bind_ice(pc, LOOPBACK, receive_buffer=rcvbuf)
    await pc.setLocalDescription(await pc.createOffer())
    video_pts: set[int] = set()
    record_headers(pc, record, video_pts, drop=True)
    record.asked = time.monotonic()
    response = await http.post(url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
    body = await response.text()
    record.answered = time.monotonic()
    record.status = response.status
    if response.status != 201:
        record.error = body[:300]
        return pc
    video_pts.update(video_payload_types(body))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return pc


async def run(args: argparse.Namespace, join_at: float, stop_at: float | None) -> None:
    records = [Record(args.first + k * args.stride) for k in range(args.count)]
    url = f"{args.base}/whep/{args.room}"
    peers: list[RTCPeerConnection] = []

    async def join(record: Record) -> None:
        delay = join_at + record.index * args.join_interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            peers.append(await view(http, url, record, args.rcvbuf))
        except Exception as exc:  # recorded per viewer: one failed join must not end the others
            record.error = f"{type(exc).__name__}: {exc}"

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(join(r) for r in records))
        if stop_at is None:
            stop_at = json.loads(await asyncio.to_thread(sys.stdin.readline))["stop_at"]
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    with open(args.out, "w") as out:
        json.dump([r.as_json() for r in records], out)
    # The bench stops the server next; closing every connection politely would
    # only add load to the core it measures, and aiortc's shutdown of many
    # peers can stall the loop's exit.
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--room", required=True)
    parser.add_argument("--first", type=int, required=True, help="global index of this process's first viewer")
    parser.add_argument("--stride", type=int, required=True, help="global index step between its viewers")
    parser.add_argument("--count", type=int, required=True, help="viewers in this process")
    parser.add_argument("--join-interval", type=float, required=True, help="seconds between joins (global)")
    parser.add_argument("--rcvbuf", type=int, default=4 * 1024 * 1024, help="UDP receive buffer per viewer")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print("ready", flush=True)
    times = json.loads(sys.stdin.readline())
    uvloop.run(run(args, times["join_at"], times["stop_at"]))


if __name__ == "__main__":
    main()

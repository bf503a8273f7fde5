"""Recording through the real engine: an aiortc publisher over WHIP, a host pin, REST reads."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import aiohttp
import av
import pytest
from media_peers import Publisher

from engine.app import App
from engine.config import Config
from engine.media.frames import EncodedFrame
from engine.recording.h264 import nal_units
from tests.conftest import connect, token


class FrameCapture:
    """A second tap beside the recorder: every video frame the relay assembled for the room."""

    def __init__(self) -> None:
        self.video: list[bytes] = []
        self.audio = 0

    def source_started(self, room: str, codecs: dict[str, str]) -> None:
        """Sources matter to the recorder only."""

    def frame(self, room: str, frame: EncodedFrame) -> None:
        if frame.kind == "video":
            if self.video or frame.keyframe:
                self.video.append(frame.data)
        else:
            self.audio += 1

    def source_ended(self, room: str) -> None:
        """Sources matter to the recorder only."""


def avcc_units(sample: bytes) -> list[bytes]:
    units, pos = [], 0
    while pos < len(sample):
        (size,) = struct.unpack_from(">I", sample, pos)
        units.append(sample[pos + 4:pos + 4 + size])
        pos += 4 + size
    return units


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(host="127.0.0.1", http_port=0, ws_port=0, data_dir=str(tmp_path / "data"),
                  secret="test-secret-" + "x" * 32, admin_key="test-admin", tick_ms=20, demo_catalog=False,
                  announce="127.0.0.1", recording_rejoin=1.5)


async def publish_for(engine: App, http: aiohttp.ClientSession, h264, opus, seconds: float) -> None:
    base = f"http://127.0.0.1:{engine.http_port}"
    publisher = Publisher(h264, opus)
    response = await publisher.publish(http, base, "demo", engine.rooms.get("demo").stream_key,
                                       {"video": "H264", "audio": "opus"})
    assert response.status == 201
    await asyncio.sleep(seconds)
    await http.delete(base + publisher.location)
    await publisher.close()


async def test_broadcast_recorded_byte_for_byte_with_its_timeline(engine: App, h264, opus) -> None:
    capture = FrameCapture()
    engine.media.taps.append(capture)
    base = f"http://127.0.0.1:{engine.http_port}"
    async with aiohttp.ClientSession() as http:
        host = await connect(engine, token(engine, "demo", "host", "host"))
        put = await host.request({"type": "product.put", "id": "p0", "product": {
            "id": "mug", "title": "Mug", "price": 1200, "currency": "EUR", "stock": 5}})
        assert put["type"] == "ack", put
        first = asyncio.ensure_future(publish_for(engine, http, h264, opus, 3.0))
        await asyncio.sleep(2.0)
        pinned = await host.request({"type": "pin", "id": "p1", "tag": {"id": "t1", "product_id": "mug",
                                                                         "x": 0.5, "y": 0.5}})
        assert pinned["type"] == "ack", pinned
        live_at = len(capture.video)
        await first
        await asyncio.sleep(0.5)  # dropped, back within the rejoin window
        await publish_for(engine, http, h264, opus, 2.0)
        await host.close()
        await asyncio.sleep(2.5)  # the rejoin window passes: the recording ends
        listing = await (await http.get(f"{base}/api/rooms/demo/recordings")).json()
        assert len(listing["recordings"]) == 1, listing
        recording = listing["recordings"][0]
        assert recording["state"] == "complete" and recording["featured"] == ["mug"]
        playlist = await http.get(recording["links"]["hls"])
        assert playlist.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
        text = await playlist.text()
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and '#EXT-X-MAP:URI="init.mp4"' in text
        names = ["init.mp4"] + [line for line in text.splitlines() if line.endswith(".m4s")]
        data = b""
        for name in names:
            segment = await http.get(recording["links"]["hls"].rsplit("/", 1)[0] + "/" + name)
            assert segment.status == 200 and segment.headers["Content-Type"] == "video/mp4"
            data += await segment.read()
        timeline = await (await http.get(recording["links"]["timeline"])).json()
    path = Path(engine.config.data_dir) / "whole.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert container.streams.audio and container.streams.audio[0].codec_context.name == "opus"
        samples = [bytes(p) for p in container.demux(video) if p.size]
    assert [avcc_units(s) for s in samples] == [nal_units(d) for d in capture.video]
    assert capture.audio > 0
    [pin] = [e for e in timeline["events"] if e["type"] == "tag.pinned"]
    # the frame live when the pin was applied: ~live_at frames of 1/30 s into the recording
    assert abs(pin["media_ts"] - (live_at - 1) / 30) <= 2 / 30
    assert recording["duration"] == pytest.approx(sum(
        float(line.split(":")[1].rstrip(",")) for line in text.splitlines() if line.startswith("#EXTINF")), abs=1e-3)

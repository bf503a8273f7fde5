"""Per-viewer queues: bounded, drop until the next keyframe, late joiners near the live edge."""

from __future__ import annotations

from fractions import Fraction

from engine.media import metrics
from engine.media.forwarding import RelayTrack, StockOutput, ViewerCounters
from engine.media.frames import EncodedFrame, KeyframeCache, h264_is_keyframe, vp8_keyframe_size

TB = Fraction(1, 90000)


def frame(ts: int, keyframe: bool = False, kind: str = "video") -> EncodedFrame:
    return EncodedFrame(kind, "H264", b"x" * 10, ts, TB, keyframe)


def counters() -> ViewerCounters:
    return ViewerCounters(metrics.PACKETS_OUT, metrics.BYTES_OUT, metrics.DROPPED, "unit")


async def test_slow_viewer_drops_until_next_keyframe():
    behind = []
    track = RelayTrack("video", 3, counters(), lambda: behind.append(1), lambda: None)
    track.enqueue(frame(0), 0)  # no keyframe yet: not queued
    for ts in range(1, 4):
        track.enqueue(frame(ts, keyframe=ts == 1), ts)
    track.enqueue(frame(4), 4)  # queue full: emptied, waits for a keyframe
    assert behind == [1]
    track.enqueue(frame(5), 5)
    track.enqueue(frame(6, keyframe=True), 6)
    track.enqueue(frame(7), 7)
    assert [(await track.recv()).pts for _ in range(2)] == [6, 7]


async def test_audio_drops_oldest():
    track = RelayTrack("audio", 2, counters(), lambda: None, lambda: None)
    for ts in range(4):
        track.enqueue(frame(ts, kind="audio"), ts)
    assert [(await track.recv()).pts for _ in range(2)] == [2, 3]


async def test_late_joiner_burst_is_packed_before_the_live_edge():
    output = StockOutput({"video": "H264"}, 10, counters(), lambda: None, lambda: None, lambda: None)
    output.start([frame(1000, True), frame(4000), frame(7000)])
    output.push(frame(10000))
    assert [(await output.tracks["video"].recv()).pts for _ in range(4)] == [6998, 6999, 7000, 10000]
    output.close()


def test_keyframe_cache_is_bounded():
    cache = KeyframeCache(max_frames=3, max_bytes=1000)
    cache.add(frame(0))
    assert not cache
    cache.add(frame(1, True))
    cache.add(frame(2))
    assert len(cache.frames()) == 2
    cache.add(frame(3))
    cache.add(frame(4))
    assert not cache  # a group longer than the bound is dropped whole


def test_keyframe_detection():
    assert h264_is_keyframe(b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x01\x65\x88")
    assert not h264_is_keyframe(b"\x00\x00\x00\x01\x41\x9a")
    vp8_key = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00])
    assert vp8_keyframe_size(vp8_key) == (320, 240)
    assert vp8_keyframe_size(bytes([0x11]) + vp8_key[1:]) is None

"""The muxer's one-fragment-per-frame output (what live HLS parts are made of), read box by box: every
sample of both tracks lasts what it should and each fragment starts where the one before it of its
track ended, also when two audio frames come between two video frames (as 20 ms Opus frames do
between 33 ms video frames). Chromium's Media Source Extensions buffer nothing past a sample that
lasts 0 or a decode time given twice."""

from __future__ import annotations

from typing import Any

import pytest
from media_peers import encode_opus, encode_video

from engine.recording.boxes import FragmentSplitter, track_runs
from engine.recording.muxer import Fmp4Muxer, fragment_options

VIDEO_TICKS = 3000  # 30 fps at 90 kHz
AUDIO_TICKS = 960  # 20 ms at 48 kHz


@pytest.fixture(scope="module")
def clip() -> tuple[Any, Any]:
    return encode_video("h264", frames=30, gop=30), encode_opus()


def test_one_fragment_per_frame_keeps_every_duration_and_decode_time(clip: tuple[Any, Any]) -> None:
    video, opus = clip
    fragments: list[bytes] = []
    muxer = Fmp4Muxer(FragmentSplitter(lambda init: None, lambda data, moof: fragments.append(moof)),
                      video.frames[0].data, True, fragment_options(0.0, every_frame=True))
    audio = 0
    for index in range(24):
        muxer.add("video", video.frames[index].data, 9000 + VIDEO_TICKS * index, index == 0)
        for _ in range(1 if index % 3 == 0 else 2):  # 5 Opus frames per 3 video frames, as in 100 ms
            muxer.add("audio", opus.frames[audio].data, 4800 + AUDIO_TICKS * audio, False)
            audio += 1
    muxer.close()

    ends: dict[int, int] = {}
    samples = {1: 0, 2: 0}
    for moof in fragments:
        for track, run in track_runs(moof).items():
            assert run.samples == 1, "one frame per fragment"
            assert run.duration > 0, (track, run)
            if track in ends:
                assert run.start == ends[track], (track, run, ends[track])
                assert run.duration == (VIDEO_TICKS if track == 1 else AUDIO_TICKS), (track, run)
            ends[track] = run.start + run.duration
            samples[track] += 1
    assert samples == {1: 24, 2: audio}

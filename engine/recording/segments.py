"""Stores the fragmented MP4 the muxer writes as CMAF files: one init segment, then one file per fragment.

Each complete fragment (engine/recording/boxes.py splits them) goes to its own file as soon as
its ``mdat`` ends, flushed and fsynced, so a crash loses at most the fragment in progress.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from engine.recording.boxes import FragmentSplitter, track_runs

INIT = "init.mp4"
#: The video track's id in the files the recorder and live HLS write (audio is track 2).
VIDEO_TRACK = 1


def segment_name(number: int) -> str:
    return f"seg-{number:06d}.m4s"


class SegmentFiles(FragmentSplitter):
    """A write-only file object for the muxer that stores init and media segments in ``directory``.

    ``on_segment(name, size, start)`` is told of each media segment written (``start``: its first
    video decode time, in the video track's timescale).
    """

    def __init__(self, directory: Path, on_segment: Callable[[str, int, int | None], None]) -> None:
        super().__init__(self._stored_init, self._stored_fragment)
        self._directory = directory
        self._on_segment = on_segment
        self.count = 0
        self.bytes = 0

    def _stored_init(self, data: bytes) -> None:
        self._store(INIT, data)

    def _stored_fragment(self, data: bytes, moof: bytes) -> None:
        self.count += 1
        name = segment_name(self.count)
        self._store(name, data)
        video = track_runs(moof).get(VIDEO_TRACK)
        self._on_segment(name, len(data), video.start if video is not None else None)

    def _store(self, name: str, data: bytes) -> None:
        path = self._directory / name
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        self.bytes += len(data)

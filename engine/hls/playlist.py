"""The LL-HLS media playlist of a live window (RFC 8216bis, version 9), and its file names.

Parts are listed for the segments within three target durations of the live edge (and for the
segment growing), as RFC 8216bis recommends; older segments appear whole. ``skip`` makes a delta
update: segments ending more than CAN-SKIP-UNTIL (six target durations) before the live edge are
replaced by one ``EXT-X-SKIP``.
"""

from __future__ import annotations

import re
import time

from engine.hls.window import LiveWindow, Segment

#: File names of a stream: its id, then the init number, segment number (msn) or part number.
FILE = re.compile(r"(init|seg|part)-([0-9a-f]{8})-([0-9]{1,12})\.(mp4|m4s)")


def init_name(stream: str, number: int) -> str:
    return f"init-{stream}-{number}.mp4"


def segment_name(stream: str, msn: int) -> str:
    return f"seg-{stream}-{msn}.m4s"


def part_name(stream: str, part_id: int) -> str:
    return f"part-{stream}-{part_id}.m4s"


def _date(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z"


def skip_until(window: LiveWindow) -> float:
    """CAN-SKIP-UNTIL: six target durations, the least RFC 8216bis allows."""
    return 6.0 * window.target


def skipped_segments(window: LiveWindow) -> int:
    """How many segments a delta update leaves out: those ending more than CAN-SKIP-UNTIL before the end."""
    end = sum(segment.duration for segment in window.segments)
    count, elapsed = 0, 0.0
    for segment in window.segments:
        elapsed += segment.duration
        if not segment.complete or end - elapsed <= skip_until(window):
            break
        count += 1
    return count


def media_playlist(stream: str, window: LiveWindow, part_target: float, skip: bool = False, query: str = "") -> str:
    """The playlist of a window holding at least one part; ``query`` follows every file name (a
    private room's ``?token=``)."""
    segments = list(window.segments)
    skipped = skipped_segments(window) if skip else 0
    lines = ["#EXTM3U", "#EXT-X-VERSION:9", f"#EXT-X-TARGETDURATION:{window.target}",
             f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}",
             f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f},"
             f"CAN-SKIP-UNTIL={skip_until(window):.1f}",
             f"#EXT-X-MEDIA-SEQUENCE:{segments[0].msn}"]
    if window.discontinuities:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{window.discontinuities}")
    if skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
    listed = segments[skipped:]
    parts_from = _parts_from(listed, 3.0 * window.target)
    previous: Segment | None = segments[skipped - 1] if skipped else None
    for index, segment in enumerate(listed):
        changed = previous is not None and previous.init != segment.init
        if changed:
            lines.append("#EXT-X-DISCONTINUITY")
        if changed or index == 0:  # a delta update names its map too: the skipped segments' may be gone
            lines.append(f'#EXT-X-MAP:URI="{init_name(stream, segment.init)}{query}"')
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_date(segment.wall_start)}")
        if index >= parts_from:
            for part in segment.parts:
                lines.append(f'#EXT-X-PART:DURATION={part.duration:.5f},URI="{part_name(stream, part.id)}{query}"'
                             + (",INDEPENDENT=YES" if part.independent else ""))
        if segment.complete:
            lines += [f"#EXTINF:{segment.duration:.5f},", segment_name(stream, segment.msn) + query]
        previous = segment
    lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_name(stream, window.next_part)}{query}"')
    return "\n".join(lines) + "\n"


#: Playlists a window keeps rendered at once; past it (a private room's many tokens) they are rendered
#: per request.
CACHED_PLAYLISTS = 64


def playlist_bytes(stream: str, window: LiveWindow, part_target: float, skip: bool = False, query: str = "") -> bytes:
    """``media_playlist`` encoded, rendered once per window change for each (skip, query) asked."""
    key = (skip, query)
    body = window.playlists.get(key)
    if body is None:
        body = media_playlist(stream, window, part_target, skip, query).encode()
        if len(window.playlists) < CACHED_PLAYLISTS:
            window.playlists[key] = body
    return body


def _parts_from(segments: list[Segment], span: float) -> int:
    """Index of the first segment whose parts are listed: those ending within ``span`` of the live edge."""
    elapsed = 0.0
    for index in range(len(segments) - 1, -1, -1):
        if elapsed > span:
            return index + 1
        elapsed += segments[index].duration
    return 0

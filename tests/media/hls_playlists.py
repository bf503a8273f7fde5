"""Reading LL-HLS media playlists in tests: tags, segments with their parts, the preload hint."""

from __future__ import annotations

from dataclasses import dataclass, field


def attributes(value: str) -> dict[str, str]:
    """``KEY=VALUE,KEY="VALUE"`` of a tag, quotes removed (no value here holds a comma)."""
    pairs = (item.split("=", 1) for item in value.split(","))
    return {key: raw.strip('"') for key, raw in pairs}


@dataclass
class ListedPart:
    duration: float
    uri: str
    independent: bool


@dataclass
class ListedSegment:
    msn: int
    parts: list[ListedPart] = field(default_factory=list)
    duration: float | None = None  #: EXTINF, once complete
    uri: str | None = None
    map: str | None = None
    discontinuity: bool = False


@dataclass
class Playlist:
    text: str
    tags: dict[str, str]
    segments: list[ListedSegment]
    hint: str | None

    @property
    def media_sequence(self) -> int:
        return int(self.tags["EXT-X-MEDIA-SEQUENCE"])

    @property
    def parts(self) -> list[ListedPart]:
        return [part for segment in self.segments for part in segment.parts]

    def next_request(self) -> tuple[int, int]:
        """(_HLS_msn, _HLS_part) of the part after the last listed, as a player asks for it."""
        last = self.segments[-1]
        return (last.msn + 1, 0) if last.uri is not None else (last.msn, len(last.parts))


def parse(text: str) -> Playlist:
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U", text
    tags: dict[str, str] = {}
    segments: list[ListedSegment] = []
    hint = None
    msn = None
    current: ListedSegment | None = None
    pending_map: str | None = None
    discontinuity = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name == "#EXT-X-MEDIA-SEQUENCE":
            msn = int(value)
        if name == "#EXT-X-SKIP":
            msn = (msn or 0) + int(attributes(value)["SKIPPED-SEGMENTS"])
        if current is None and name in ("#EXT-X-PART", "#EXTINF"):
            assert msn is not None, text
            current = ListedSegment(msn, map=pending_map, discontinuity=discontinuity)
            pending_map, discontinuity = None, False
            segments.append(current)
        if name == "#EXT-X-PART":
            values = attributes(value)
            current.parts.append(ListedPart(float(values["DURATION"]), values["URI"],
                                            values.get("INDEPENDENT") == "YES"))
        elif name == "#EXTINF":
            current.duration = float(value.rstrip(","))
        elif name == "#EXT-X-MAP":
            pending_map = attributes(value)["URI"]
        elif name == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif name == "#EXT-X-PRELOAD-HINT":
            hint = attributes(value)["URI"]
        elif line and not line.startswith("#"):
            current.uri = line
            current = None
            msn += 1
        elif name.startswith("#EXT-X-") and name not in ("#EXT-X-PROGRAM-DATE-TIME",):
            tags[name[1:]] = value
    return Playlist(text, tags, segments, hint)

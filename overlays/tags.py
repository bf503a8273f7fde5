"""Product tags pinned over the video: where on the frame, which product, optional label and time.

Tags go into the room snapshot and are kept with the catalog, so a restart shows them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import shown
from overlays.catalog import check_float, check_id, check_text
from overlays.events import DomainError

MAX_MEDIA_TS = 10**7  # seconds (about 115 days of stream): bounds a client-supplied float


@dataclass(frozen=True, slots=True)
class Tag:
    """`x`, `y` are normalised frame coordinates in [0, 1] (0, 0 is top left), so they hold at any
    rendered size; `media_ts` (seconds of media time) lets a player show the tag in step with video."""

    id: str
    product_id: str
    x: float
    y: float
    label: str | None = None
    media_ts: float | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> Tag:
        label = fields.get("label")
        media_ts = fields.get("media_ts")
        return cls(
            id=check_id("tag id", fields.get("id")),
            product_id=check_id("product id", fields.get("product_id")),
            x=check_float("x", fields.get("x"), 0.0, 1.0),
            y=check_float("y", fields.get("y"), 0.0, 1.0),
            label=None if label is None else check_text("label", label, 80),
            media_ts=None if media_ts is None else check_float("media_ts", media_ts, 0.0, MAX_MEDIA_TS),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TagBoard:
    """The tags currently pinned, in pin order, at most `max_tags` at once."""

    def __init__(self, max_tags: int) -> None:
        self.max_tags = max_tags
        self._tags: dict[str, Tag] = {}

    def __iter__(self) -> Iterator[Tag]:
        return iter(self._tags.values())

    def pin(self, tag: Tag) -> None:
        """Pin, or move an already pinned tag (same id) without counting it twice."""
        if tag.id not in self._tags and len(self._tags) >= self.max_tags:
            raise DomainError("full", f"at most {self.max_tags} tags can be pinned at once")
        self._tags[tag.id] = tag

    def unpin(self, tag_id: str) -> Tag:
        tag = self._tags.pop(tag_id, None)
        if tag is None:
            raise DomainError("not_found", f"no pinned tag {shown(tag_id)}")
        return tag

    def unpin_product(self, product_id: str) -> list[Tag]:
        """Drop every tag of a product (the product is going away)."""
        gone = [t for t in self._tags.values() if t.product_id == product_id]
        for tag in gone:
            del self._tags[tag.id]
        return gone

"""The room's viewer count: every path, each person once (signaling/audience.py)."""

from __future__ import annotations

import pytest

from signaling.audience import Audience


def test_each_user_counts_once_whatever_the_path() -> None:
    changes: list[tuple[str, int]] = []
    audience = Audience(lambda room, count: changes.append((room, count)))
    audience.joined("shop", "media", None)  # a WHEP player without a token
    audience.joined("shop", "media", None)
    audience.joined("shop", "ws", "ann")  # a watch page: websocket, then WHEP with its token
    audience.joined("shop", "media", "ann")
    assert audience.count("shop") == 3
    audience.joined("shop", "ws", "ann")  # a second tab of the same person
    assert audience.count("shop") == 4
    audience.joined("shop", "media", "ann")
    assert audience.count("shop") == 4
    audience.joined("other", "ws", "bob")
    assert (audience.count("shop"), audience.count("other")) == (4, 1)
    for path in ("ws", "media", "ws", "media"):
        audience.left("shop", path, "ann")
    audience.left("shop", "media", None)
    audience.left("shop", "media", None)
    assert audience.count("shop") == 0
    assert changes[-1] == ("shop", 0)
    assert audience._rooms.keys() == {"other"}  # an empty room keeps nothing


def test_a_websocket_viewer_without_a_user_id_is_refused() -> None:
    with pytest.raises(ValueError):
        Audience(lambda room, count: None).joined("shop", "ws", None)

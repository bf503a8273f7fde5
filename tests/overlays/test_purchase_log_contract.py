"""PurchaseLog contract: runs against every backend in conftest.LOG_BACKENDS (retention 5)."""

from __future__ import annotations

from typing import Any

import pytest

from overlays.events import DomainError, cloud_event


def event(n: int, room: str = "r") -> dict[str, Any]:
    return cloud_event(
        room=room,
        type_="livecart.order.placed",
        event_id=f"o{n}.placed",
        subject=f"o{n}",
        time=1_700_000_000 + n,
        data={"n": n},
    )


async def test_append_assigns_increasing_sortable_ids(purchase_log) -> None:
    assert await purchase_log.last_id() is None
    assert await purchase_log.read() == []
    ids = [await purchase_log.append(event(n)) for n in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert await purchase_log.last_id() == ids[-1]
    entries = await purchase_log.read()
    assert [e.id for e in entries] == ids
    assert [e.event["data"]["n"] for e in entries] == [0, 1, 2]
    assert [e.id for e in await purchase_log.read(after=ids[0], limit=1)] == [ids[1]]
    assert await purchase_log.read(after=ids[-1]) == []


async def test_append_is_idempotent_on_source_and_id(purchase_log) -> None:
    first = await purchase_log.append(event(1))
    assert await purchase_log.append(event(1)) == first
    other_room = await purchase_log.append(event(1, room="other"))
    assert other_room != first
    assert len(await purchase_log.read()) == 2


async def test_a_repeated_append_leaves_no_gap(purchase_log) -> None:
    """Readers resume gaplessly: the entry after a deduplicated append is the next number."""
    first = await purchase_log.append(event(1))
    await purchase_log.append(event(1))
    assert await purchase_log.last_id() == first
    second = await purchase_log.append(event(2))
    assert int(second) == int(first) + 1


async def test_retention_drops_oldest(purchase_log) -> None:
    ids = [await purchase_log.append(event(n)) for n in range(8)]
    entries = await purchase_log.read(limit=100)
    assert [e.id for e in entries] == ids[-5:]
    assert [e.id for e in await purchase_log.read(after=ids[0])] == ids[-5:]  # too far behind
    assert await purchase_log.last_id() == ids[-1]


@pytest.mark.parametrize("after, limit", [("abc", 10), ("-1", 10), (None, 0), (None, 5000), (None, True)])
async def test_bad_read_arguments(purchase_log, after: Any, limit: Any) -> None:
    with pytest.raises(DomainError) as err:
        await purchase_log.read(after=after, limit=limit)
    assert err.value.code == "bad_request"

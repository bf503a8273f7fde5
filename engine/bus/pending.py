"""State values set since they last went out, per room: what a bus's next tick or next discrete
event of the room sends.

Both buses keep them the same way: the latest value of each key wins (a counter is worth only its
newest figure), and a room's values are taken all at once, to go out in one batch. A backend that
could not send what it took (Redis away) puts the values back, behind any newer ones set meanwhile.
"""

from __future__ import annotations

from typing import Any

#: key -> (event type, data): one room's pending values.
Values = dict[str, tuple[str, dict[str, Any]]]


class PendingState:
    """Per room, the state values waiting to go out (at most one per key: bounded by the keys in use)."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, Values] = {}

    def set(self, room: str, key: str, type: str, data: dict[str, Any]) -> None:
        self._rooms.setdefault(room, {})[key] = (type, data)

    def take(self, room: str) -> Values:
        """The room's pending values (empty if none), now no longer pending."""
        return self._rooms.pop(room, None) or {}

    def take_all(self) -> dict[str, Values]:
        """Every room's pending values, now no longer pending."""
        rooms, self._rooms = self._rooms, {}
        return rooms

    def put_back(self, room: str, values: Values) -> None:
        """Values that did not go out wait again, unless a newer value of the same key came meanwhile."""
        if not values:
            return  # an empty entry would be taken as values to send
        kept = self._rooms.setdefault(room, {})
        for key, value in values.items():
            kept.setdefault(key, value)

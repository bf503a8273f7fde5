"""Sessions admitted against the node's caps whose answer is still being made.

A session enters ``MediaService``'s table only once aiortc has answered its
offer, which takes several awaits. Offers arriving meanwhile must see the
slots already promised, or fifty simultaneous POSTs all pass a cap of
twenty: each admission holds its slot from the check until its session is
in the table (or its offer failed).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


class Admissions:
    """Slots held by offers being answered: viewers per room, and sessions of every role."""

    def __init__(self) -> None:
        self._viewers: Counter[str] = Counter()
        self.viewers = 0  # viewers being answered, all rooms
        self.total = 0  # sessions being answered, publishers included

    def viewers_in(self, room_id: str) -> int:
        """Viewers of ``room_id`` being answered."""
        return self._viewers[room_id]

    def pending(self, room_id: str) -> bool:
        """Whether a viewer of ``room_id`` is being answered (its media room must stay; a publisher claims it)."""
        return room_id in self._viewers

    @contextlib.contextmanager
    def hold(self, role: str, room_id: str) -> Iterator[None]:
        """Hold a slot for the duration of the block; leave it once the session is in the table."""
        viewer = role == "viewer"
        self.total += 1
        if viewer:
            self.viewers += 1
            self._viewers[room_id] += 1
        try:
            yield
        finally:
            self.total -= 1
            if viewer:
                self.viewers -= 1
                self._viewers[room_id] -= 1
                if not self._viewers[room_id]:
                    del self._viewers[room_id]

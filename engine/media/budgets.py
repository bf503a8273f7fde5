"""Budgets that bound what one remote peer can make the node do per second.

``RetransmitBudget`` bounds retransmissions: a NACK names up to 17 lost
packets, and the relay answers from a history of thousands; without a budget
one viewer can make the node resend its history again and again (an
amplifier pointed at whatever address its ICE path names). Each viewer gets
a rate of packets per second, and each packet may be resent to it a few
times at most: a real receiver asks again only when a retransmission itself
was lost.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from engine.media import metrics
from engine.tokenbucket import TokenBucket


class RetransmitBudget:
    """Per viewer: ``rate`` packets per second (burst of one second), ``per_packet`` resends of each.

    Sequence numbers are counted per stream (``key``), the ``remember`` most
    recent ones per viewer, so memory stays bounded whatever the NACKs name.
    """

    def __init__(
        self, rate: float, per_packet: int, remember: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_packet = per_packet
        self._rate = TokenBucket(rate, max(rate, 1.0), clock)
        self._remember = remember
        self._sent: OrderedDict[tuple[object, int], int] = OrderedDict()
        self.refused = 0

    def allow(self, key: object, sequence_numbers: Sequence[int]) -> list[int]:
        """The sequence numbers that may be resent now, in order; the others are refused (and counted)."""
        fresh = []
        for seq in sequence_numbers:
            if self._sent.get((key, seq), 0) < self.per_packet and seq not in fresh:
                fresh.append(seq)
            else:
                self.refused += 1
        granted = self._rate.take_up_to(len(fresh))
        self.refused += len(fresh) - granted
        if len(sequence_numbers) > granted:
            metrics.RETRANSMITS_REFUSED.inc(len(sequence_numbers) - granted)
        allowed = fresh[:granted]
        for seq in allowed:
            mark = (key, seq)
            self._sent[mark] = self._sent.get(mark, 0) + 1
            self._sent.move_to_end(mark)
        while len(self._sent) > self._remember:
            self._sent.popitem(last=False)
        return allowed

"""Ordered acks: an offset reaches Faust only once every lower offset the agent took is done.

Agents work on more than one batch at a time (`batching.overlapped`), so batches finish out
of order. Faust cannot be trusted to hold a commit back at the gap this leaves:
`Consumer._new_offset` holds back only when `min(acked) - committed > 1`, and not at all
before a partition's first commit (faust-streaming issue 606). With offset 100 still being
delivered and 101..599 acked it commits 600, and a worker killed then loses offset 100.

So the project keeps the order itself. Every event an agent takes is registered here in the
order it was taken (for one partition that is offset order, since Faust delivers a
partition in order); when a batch is done its events are marked, and only the done prefix
of each partition is released to be acked. Faust then only ever sees contiguous acks, and
its gap logic is never exercised. Pure bookkeeping, no I/O: `tests/test_acks.py` drives
Faust's real commit computation with it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable, Iterable


class _Entry:
    __slots__ = ("event", "done")

    def __init__(self, event: Any) -> None:
        self.event = event
        self.done = False


class OrderedAcks:
    """Per partition, the events taken and not yet released, in the order they were taken."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, deque[_Entry]] = {}

    def take(self, events: Iterable[Any]) -> list[_Entry]:
        """Register events as taken; returns the handle to pass to `done` for them."""
        entries = []
        for event in events:
            entry = _Entry(event)
            self._pending.setdefault(_tp(event), deque()).append(entry)
            entries.append(entry)
        return entries

    def done(self, entries: Iterable[_Entry]) -> list[Any]:
        """Mark events as handed on; returns the events that may now be acked, per partition
        in offset order: those whose every earlier taken event is done too."""
        touched = set()
        for entry in entries:
            entry.done = True
            touched.add(_tp(entry.event))
        release = []
        for tp in touched:
            queue = self._pending.get(tp)
            while queue and queue[0].done:
                release.append(queue.popleft().event)
            if queue is not None and not queue:
                del self._pending[tp]
        return release

    def waiting(self) -> int:
        """Events taken and not yet released (done but held behind an earlier one, or not done)."""
        return sum(len(q) for q in self._pending.values())

    def oldest_offsets(self) -> dict[Hashable, int]:
        """Per partition, the lowest offset not yet released: where a restart resumes."""
        return {tp: q[0].event.message.offset for tp, q in self._pending.items() if q}


def _tp(event: Any) -> Hashable:
    return event.message.tp

"""Ordered acks: commits never pass an event still in flight, checked against Faust's own
commit computation (`Consumer._new_offset`, faust-streaming 0.15.3).

Faust holds a commit back at a gap only when `min(acked) - committed > 1`, and not at all
before a partition's first commit (faust-streaming issue 606): with offset 100 in flight
and 101..599 acked it commits 600. These tests feed what `overlapped` acks into Faust's real
computation, so they fail if acks ever reach Faust out of order.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from intervaltree import IntervalTree

from streamer.acks import OrderedAcks
from streamer.batching import overlapped
from tests.test_batching import Ev, FakeStream

TP = "raw-0"


class FaustCommits(FakeStream):
    """A stream whose acks land in the bookkeeping Faust's consumer commits from."""

    def __init__(self, committed: int | None) -> None:
        super().__init__()
        self.state = SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set),
                                     _gap=defaultdict(IntervalTree), _committed_offset=defaultdict(lambda: None))
        self.state._committed_offset[TP] = committed

    async def ack(self, event) -> bool:
        await super().ack(event)
        self.state._acked[TP].append(event.message.offset)
        self.state._acked_index[TP].add(event.message.offset)
        return True

    def commit_offset(self) -> int | None:
        """What Faust would commit now (and then remember as committed)."""
        offset = FaustConsumer._new_offset(self.state, TP)
        if offset is not None:
            self.state._committed_offset[TP] = offset
        return offset


@pytest.mark.parametrize("committed", [None, 0, 100])
async def test_a_slow_batch_holds_the_commit_of_a_later_batch_that_finished_first(committed):
    first = 100 if committed == 100 else 0
    stream = FaustCommits(committed)
    slow, fast = [Ev(first)], [Ev(o) for o in range(first + 1, first + 500)]
    for e in slow + fast:
        stream.queue.put_nowait(e)
    gate = asyncio.Event()

    async def handle(batch):
        if batch[0] is slow[0]:
            await gate.wait()

    # The slow event is taken alone, then the rest as the second batch in flight.
    stream.queue._queue.clear()
    stream.queue.put_nowait(slow[0])
    agent = asyncio.create_task(overlapped(stream, 500, 0.0, handle, depth=2))
    await asyncio.sleep(0.05)
    for e in fast:
        stream.queue.put_nowait(e)
    await asyncio.sleep(0.1)
    # The later batch is done, but its commit must not pass the event still in flight.
    committed_now = stream.commit_offset()
    assert committed_now is None or committed_now <= first, committed_now
    gate.set()
    await asyncio.sleep(0.1)
    assert stream.commit_offset() == first + 500
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent


def test_only_the_done_prefix_of_each_partition_is_released():
    acks = OrderedAcks()
    a = acks.take([Ev(0, "p0"), Ev(0, "p1")])
    b = acks.take([Ev(1, "p0"), Ev(1, "p1")])
    assert acks.done(b) == []  # both partitions wait for batch a
    released = acks.done(a)
    assert sorted((e.message.tp, e.message.offset) for e in released) == [
        ("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    assert acks.waiting() == 0


def test_a_partition_not_held_up_is_released_at_once():
    acks = OrderedAcks()
    a = acks.take([Ev(5, "p0")])
    b = acks.take([Ev(6, "p0"), Ev(9, "p1")])
    assert [(e.message.tp, e.message.offset) for e in acks.done(b)] == [("p1", 9)]
    assert acks.oldest_offsets() == {"p0": 5}
    assert [e.message.offset for e in acks.done(a)] == [5, 6]

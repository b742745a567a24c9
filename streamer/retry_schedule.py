"""Retry scheduling: parked deliveries are re-attempted when due, each on its own clock.

The retry topic holds deliveries of every destination, each with its next-attempt time
(`next` header). Read in order and waited on in order, one destination's long backoff
would hold up every destination behind it on the partition. So the retry agent keeps
reading: each record waits in memory (`RetrySchedule`, earliest first) until it is due,
then goes to the delivery engine with the others due at that moment. One destination's
schedule never delays another's due retries by more than the time one engine pass takes
(bounded by the delivery deadline).

Memory is bounded by bytes (`STREAMER_RETRY_HOLD_MAX_BYTES`): once that much is waiting,
reading pauses until the earliest is due, which is at most the maximum backoff away
(`Retry-After` is capped by it too). Offsets are acked in order (`OrderedAcks`), so a
record is committed only after it and everything before it was re-delivered, re-parked
or dead-lettered; a crash re-reads what was waiting, at least once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Any, Awaitable, Callable

import faust

from streamer.acks import OrderedAcks
from streamer.batching import _next_batch, _queue, message_size
from streamer.liveness import Progress
from streamer.sinks.base import now_ms

log = logging.getLogger(__name__)


def due_ms(event: faust.EventT) -> int:
    for name, value in event.message.headers or ():
        if name == "next":
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0  # unreadable: due now, so the engine sees (and dead-letters) it
    return 0


class RetrySchedule:
    """Records waiting for their next attempt, earliest first, with the bytes they hold."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._heap: list[tuple[int, int, Any, int]] = []
        self._seq = itertools.count()  # ties keep arrival order; items are never compared

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def add(self, item: Any, due: int, size: int) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item, size))
        self.bytes += size

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int, limit: int) -> list[Any]:
        out = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            _due, _seq, item, size = heapq.heappop(self._heap)
            self.bytes -= size
            out.append(item)
        return out


async def scheduled(stream: faust.StreamT, handle: Callable[[list[faust.EventT]], Awaitable[None]],
                    batch_max: int, batch_max_bytes: int, hold_max_bytes: int,
                    progress: Progress | None = None, max_wait_s: float = 1.0) -> None:
    """Feed each record of `stream` to `handle` once it is due; ack in offset order."""
    queue = _queue(stream)
    schedule = RetrySchedule(hold_max_bytes)
    order = OrderedAcks()
    changed = asyncio.Event()
    taking_done = False

    async def take() -> None:
        nonlocal taking_done
        try:
            while True:
                while schedule.full:
                    changed.clear()
                    await changed.wait()
                batch = await _next_batch(queue, batch_max, 0.0, batch_max_bytes)
                if batch is None:
                    return
                for event, entry in zip(batch, order.take(batch)):
                    schedule.add((event, entry), due_ms(event), message_size(event))
                changed.set()
        finally:
            taking_done = True
            changed.set()

    taker = asyncio.create_task(take())
    try:
        while True:
            due = schedule.pop_due(now_ms(), batch_max)
            if due:
                changed.set()  # room again for the taker
                token = progress.begin() if progress is not None else None
                try:
                    await handle([event for event, _ in due])
                finally:
                    if token is not None:
                        progress.end(token)
                for event in order.done([entry for _, entry in due]):
                    await stream.ack(event)
                continue
            if taking_done and not len(schedule):
                taker.result()
                return
            nxt = schedule.next_due()
            wait = max_wait_s if nxt is None else min(max_wait_s, max(0.0, (nxt - now_ms()) / 1000))
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.001))
            except asyncio.TimeoutError:
                pass
    finally:
        taker.cancel()

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

Re-reading must not fork a retry chain. The commit waits behind records not yet due, so a
worker killed (or a partition moved) re-reads records whose delivery was already tried and
parked again as a later record of the same chain (same destination, event and first
attempt; more attempts). Sent again, each would start a second chain, and every crash
would multiply them. So a partition read again (new here, or its offsets went back) fires
nothing until it is read up to its high watermark, bounded by `catch_up_max_s` and by the
hold's bytes; then a due record whose chain has a later attempt already read is acked
without being sent (`streamer_retries_superseded_total`): the later record carries it on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Any, Awaitable, Callable

import faust

from streamer import metrics
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

    def pop_due(self, now: int, limit: int, keep: Callable[[Any], bool] = lambda item: False) -> tuple[list[Any], bool]:
        """Up to `limit` due items, earliest first, leaving those `keep` says to (and
        whether there were any)."""
        out, kept = [], []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            entry = heapq.heappop(self._heap)
            if keep(entry[2]):
                kept.append(entry)
                continue
            self.bytes -= entry[3]
            out.append(entry[2])
        for entry in kept:
            heapq.heappush(self._heap, entry)
        return out, bool(kept)


def chain_of(event: faust.EventT) -> tuple[tuple[bytes | None, bytes, bytes], int] | None:
    """(destination id, event id, first attempt) and the attempts made, from a parked
    delivery's headers; None for a record without them."""
    h = dict(event.message.headers or ())
    try:
        return (event.message.key, h["eid"], h["first"]), int(h["att"])
    except (KeyError, TypeError, ValueError):
        return None


class Chains:
    """Which retry chains have a later attempt read than the record at hand, and which
    partitions are read up to their end since they were (re)assigned. No I/O."""

    def __init__(self, catch_up_max_s: float) -> None:
        self.catch_up_max_s = catch_up_max_s
        self._latest: dict[tuple, int] = {}  # chain -> most attempts among its records read
        self._last_offset: dict[Any, int] = {}
        self._holding: dict[Any, float] = {}  # partition -> since when (monotonic), until caught up

    def read(self, event: faust.EventT, highwater: int | None, now: float) -> None:
        tp, offset = event.message.tp, event.message.offset
        last = self._last_offset.get(tp)
        if last is None or offset <= last:  # new here, or read again: hold until caught up
            self._holding.setdefault(tp, now)
        self._last_offset[tp] = offset
        if highwater is not None and offset + 1 >= highwater and self._holding.pop(tp, None) is not None:
            log.info("retry partition %s read to its end after being read again", tp)
        chain = chain_of(event)
        if chain is not None:
            key, attempts = chain
            if attempts > self._latest.get(key, -1):
                self._latest[key] = attempts

    def held(self, event: faust.EventT, now: float) -> bool:
        since = self._holding.get(event.message.tp)
        if since is None:
            return False
        if now - since >= self.catch_up_max_s:
            del self._holding[event.message.tp]
            log.info("retry partition %s not read to its end within %gs of being read again; its due records go",
                     event.message.tp, self.catch_up_max_s)
            return False
        return True

    def release(self) -> None:
        """Stop holding: the hold is full, nothing more can be read before something goes."""
        self._holding.clear()

    def superseded(self, event: faust.EventT) -> bool:
        """True if a later attempt of this record's chain was read; forgets the chain once
        its latest record goes, so memory follows what is held."""
        chain = chain_of(event)
        if chain is None:
            return False
        key, attempts = chain
        latest = self._latest.get(key, attempts)
        if attempts < latest:
            return True
        self._latest.pop(key, None)
        return False


async def scheduled(stream: faust.StreamT, handle: Callable[[list[faust.EventT]], Awaitable[None]],
                    batch_max: int, batch_max_bytes: int, hold_max_bytes: int,
                    progress: Progress | None = None, max_wait_s: float = 1.0,
                    catch_up_max_s: float = 10.0) -> None:
    """Feed each record of `stream` to `handle` once it is due; ack in offset order."""
    queue = _queue(stream)
    schedule = RetrySchedule(hold_max_bytes)
    order = OrderedAcks()
    chains = Chains(catch_up_max_s)
    changed = asyncio.Event()
    taking_done = False

    def highwater(event: faust.EventT) -> int | None:
        try:
            return stream.app.consumer.highwater(event.message.tp)
        except Exception:  # noqa: BLE001 - not known yet: the hold's time bound applies
            return None

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
                now = time.monotonic()
                for event, entry in zip(batch, order.take(batch)):
                    chains.read(event, highwater(event), now)
                    schedule.add((event, entry), due_ms(event), message_size(event))
                changed.set()
        finally:
            taking_done = True
            changed.set()

    taker = asyncio.create_task(take())
    try:
        while True:
            if schedule.full:
                chains.release()
            now = time.monotonic()
            due, held = schedule.pop_due(now_ms(), batch_max, lambda item: chains.held(item[0], now))
            if due:
                changed.set()  # room again for the taker
                send = [event for event, _ in due if not chains.superseded(event)]
                if len(send) < len(due):
                    metrics.retries_superseded.inc(len(due) - len(send))
                if send:
                    token = progress.begin() if progress is not None else None
                    try:
                        await handle(send)
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
            # Held records are due already: wait for the taker to read on (it sets
            # `changed`), not for their time.
            wait = max_wait_s if nxt is None or held else min(max_wait_s, max(0.0, (nxt - now_ms()) / 1000))
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.001))
            except asyncio.TimeoutError:
                pass
    finally:
        taker.cancel()

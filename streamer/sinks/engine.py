"""The delivery engine shared by the S3 and HTTP sink agents and the retry agent.

For one batch of delivery records it groups by destination, delivers each group under that
destination's concurrency limit and circuit breaker, retries a little in line, and hands
everything it could not deliver to the retry topic (or, past the retry horizon or on a
permanent error, to the dead-letter topic). It returns only when every record is durably
somewhere: delivered, parked or dead-lettered. The agent acks the batch after that, so
the commit always follows the hand-off.

A group that is not done within the delivery deadline is cancelled and parked, so one
hanging destination costs the others at most the deadline, once: after enough failures
its breaker opens and its deliveries go straight to the retry topic.

Per-destination linger (`EngineConfig.linger_s`, Vector's `batch.timeout_secs`): a small
group waits up to the linger for the same destination's records from the agent's other
batch in flight, and goes as one group, so a destination that receives a trickle gets
fuller requests. Each caller still returns only once its own records are handed on, so a
partition's commit waits at most the linger longer (plus the send).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import orjson

from streamer import metrics
from streamer.produce import Refused, cut_down
from streamer.sinks.base import Delivery, Outcome, Sink, now_ms
from streamer.status import DeliveryObserver, NullObserver

log = logging.getLogger(__name__)

# Durable: returns, per (topic, key, value, headers) record, the broker's metadata or
# `Refused` (the broker will never take it); transient failures are retried inside.
Produce = Callable[[list[tuple[str, bytes, bytes, list]]], Awaitable[list]]


@dataclass
class Breaker:
    failures: int = 0
    opened_at: float | None = None
    half_open: bool = False

    def allow(self, reset_s: float) -> bool:
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at >= reset_s:
            self.half_open = True  # one trial pass
            return True
        return False

    def record(self, ok: bool, threshold: int) -> None:
        if ok:
            self.failures, self.opened_at, self.half_open = 0, None, False
            return
        self.failures += 1
        if self.half_open or self.failures >= threshold:
            self.opened_at, self.half_open = time.monotonic(), False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


@dataclass
class EngineConfig:
    retry_topic: str
    dead_letter_topic: str
    inline_retries: int = 2
    retry_base_s: float = 0.2
    retry_max_backoff_s: float = 300.0
    retry_horizon_s: float = 7 * 24 * 3600.0
    deadline_s: float = 5.0
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    destination_concurrency: int = 4
    idle_evict_s: float = 600.0  # a destination unused this long forgets its limit and closed breaker
    # A group smaller than this waits up to linger_s for more of its destination's records
    # (0: every group goes at once). Only for sinks that put many records in one request.
    linger_s: float = 0.0
    linger_max_items: int = 500
    linger_max_bytes: int = 1024 * 1024


class _Lingering:
    """One destination's records waiting to go as one group, and when they are done."""

    __slots__ = ("dest_id", "items", "size", "done", "timer")

    def __init__(self, dest_id: str) -> None:
        self.dest_id = dest_id
        self.items: list[Delivery] = []
        self.size = 0
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None


PARSED_DESTINATIONS = 20_000


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; Retry-After sets the earliest next try, up to the
    cap: a destination answering `Retry-After: 86400` must not park its deliveries (and, on
    an ordered topic, everyone behind them) for a day."""
    delay = random.uniform(0, min(cap, base * (2 ** min(attempt, 60))))
    return max(delay, min(retry_after or 0.0, cap))


@dataclass
class DeliveryEngine:
    destination_type: str
    sink: Sink
    produce: Produce
    cfg: EngineConfig
    produce_durably: Produce | None = None
    breakers: dict[str, Breaker] = field(default_factory=lambda: defaultdict(Breaker))
    limits: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)
    _next_sweep: float = 0.0
    _lingering: dict[tuple[str, bytes], _Lingering] = field(default_factory=dict)
    _groups: set[asyncio.Task] = field(default_factory=set)
    # Per-destination bookkeeping for the status topic (streamer/status.py); no I/O.
    observer: DeliveryObserver = field(default_factory=NullObserver)
    # A destination's JSON as its delivery records carry it -> parsed, so a group does not
    # parse it again (it was 2.6% of a REST worker's samples). Sinks never change the dict.
    _parsed: dict[bytes, dict] = field(default_factory=dict)
    # Counting the open breakers walks every destination's: done again only after one opened
    # or closed (the walk per batch was 1.8% of a REST worker's samples with 2,065 destinations).
    _breakers_changed: bool = True

    def __post_init__(self) -> None:
        if self.produce_durably is None:
            self.produce_durably = self.produce
        t = self.destination_type
        self._ok = metrics.attempts.labels(t, "ok")
        self._retryable = metrics.attempts.labels(t, "retryable")
        self._fatal = metrics.attempts.labels(t, "fatal")
        self._delivered = metrics.deliveries.labels(t, "delivered")
        self._parked = metrics.deliveries.labels(t, "parked")
        self._dead = metrics.deliveries.labels(t, "dead_lettered")
        self._latency = metrics.latency.labels(t)

    async def process(self, deliveries: list[Delivery], linger: bool = True) -> None:
        """Deliver, park or dead-letter every record; returns once all are handed on.

        `linger=False` sends at once without joining other callers' groups: for a batch
        tried again after a failure, so a record is isolated with nothing else's records."""
        # Grouped by id *and* the destination as routed: the id names a scope
        # ("workspace:7"), so a batch that straddles a settings change holds records for
        # the old and the new destination under one id, and each must go where it was routed.
        groups: dict[tuple[str, bytes], list[Delivery]] = defaultdict(list)
        for d in deliveries:
            groups[d.destination_id, d.destination].append(d)
        if linger and self.cfg.linger_s > 0:
            waits = {self._join(key, items) for key, items in groups.items()}
            # asyncio.wait, not gather: a caller cancelled at shutdown must not cancel a
            # group that holds another caller's records too (its own are read again anyway).
            await asyncio.wait(waits)
            for w in waits:
                w.result()  # a bug here must surface, not vanish
        else:
            await self._deliver([(dest_id, items) for (dest_id, _destination), items in groups.items()])
        self._export_breakers()
        for dest_id, _destination in groups:
            b = self.breakers[dest_id]
            self.observer.breaker(dest_id, "open" if b.is_open else "half_open" if b.half_open else "closed")
        self._sweep_idle()

    def _join(self, key: tuple[str, bytes], items: list[Delivery]) -> asyncio.Future:
        """Add records to their destination's lingering group (opening one if there is
        none); the group goes when the linger ends or it is big enough."""
        group = self._lingering.get(key)
        if group is None:
            group = self._lingering[key] = _Lingering(key[0])
            group.timer = asyncio.get_running_loop().call_later(self.cfg.linger_s, self._release, key)
        group.items.extend(items)
        group.size += sum(len(d.message) for d in items)
        if len(group.items) >= self.cfg.linger_max_items or group.size >= self.cfg.linger_max_bytes:
            self._release(key)
        return group.done

    def _release(self, key: tuple[str, bytes]) -> None:
        group = self._lingering.pop(key, None)
        if group is None:
            return
        group.timer.cancel()
        task = self._start(group.dest_id, group.items)

        def settle(t: asyncio.Task) -> None:
            if t.cancelled():
                group.done.cancel()
            elif t.exception() is not None:
                group.done.set_exception(t.exception())
            else:
                group.done.set_result(None)
        task.add_done_callback(settle)

    def _start(self, dest_id: str, items: list[Delivery]) -> asyncio.Task:
        task = asyncio.create_task(self._deliver([(dest_id, items)]))
        self._groups.add(task)  # a strong reference: the event loop keeps only weak ones
        task.add_done_callback(self._groups.discard)
        return task

    async def _deliver(self, groups: list[tuple[str, list[Delivery]]]) -> None:
        """Each destination's group at once, within the delivery deadline; a group past it
        is cancelled and parked, so a hanging destination costs the others nothing."""
        tasks = {asyncio.create_task(self._group(dest_id, items)): (dest_id, items) for dest_id, items in groups}
        try:
            done, slow = await asyncio.wait(tasks, timeout=self.cfg.deadline_s)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        for task in slow:
            task.cancel()
        for task in slow:
            dest_id, items = tasks[task]
            try:
                await task
            except asyncio.CancelledError:
                pass
            self._record(self.breakers[dest_id], False)
            await self._past_deadline(dest_id, items)
        for task in done:
            task.result()  # a bug here must surface, not vanish

    async def _past_deadline(self, dest_id: str, items: list[Delivery]) -> None:
        """A group cut off at the deadline: what the destination already accepted is
        delivered (each request settles on its own, so a slow but healthy destination is
        never sent the same events again and again); only the rest is parked, and the cut
        off request counts as an attempt, so even a destination that never answers reaches
        the retry horizon."""
        now = now_ms()
        delivered = 0
        unsettled = []
        for d in items:
            if d.settled:
                continue
            if d.outcome is not None and d.outcome.ok:
                d.settled = True
                delivered += 1
                if d.produced_ms:
                    self._latency.observe(max(0, now - d.produced_ms) / 1000)
                continue
            if d.outcome is None:  # its request was in flight when the group was cancelled
                d.attempts += 1
            unsettled.append(d)
        self._ok.inc(delivered)
        self._delivered.inc(delivered)
        self.observer.attempted(dest_id, self.destination_type, items[0].workspace_id, delivered,
                                [f"destination did not answer within {self.cfg.deadline_s:g}s"] if unsettled else [])
        # A request that was in flight may still land, which at-least-once allows (S3 keys
        # and the Idempotency-Key header make it harmless).
        await self._park(unsettled, f"destination did not answer within {self.cfg.deadline_s:g}s", None)

    async def _group(self, dest_id: str, items: list[Delivery]) -> None:
        breaker = self.breakers[dest_id]
        self.last_used[dest_id] = time.monotonic()
        if not breaker.allow(self.cfg.breaker_reset_s):
            # Counts as an attempt: a destination that stays down must reach the horizon.
            for d in items:
                d.attempts += 1
            await self._park(items, "circuit breaker open", None)
            return
        limit = self.limits.get(dest_id)
        if limit is None:  # not setdefault: that would build a semaphore for every group
            limit = self.limits[dest_id] = asyncio.Semaphore(self.cfg.destination_concurrency)
        pending = items
        attempt = 0
        while True:
            for d in pending:
                d.outcome = None
            async with limit:
                outcomes = await self._send(dest_id, pending)
            retry: list[tuple[Delivery, Outcome]] = []
            delivered = 0
            now = now_ms()
            for d, o in zip(pending, outcomes):
                d.attempts += 1
                if o.ok:
                    d.settled = True
                    delivered += 1
                    if d.produced_ms:
                        self._latency.observe(max(0, now - d.produced_ms) / 1000)
                elif not o.retryable:
                    self._fatal.inc()
                    d.errors.append(o.error)
                    await self.dead_letter([d], o.error)
                else:
                    self._retryable.inc()
                    d.errors.append(o.error)
                    retry.append((d, o))
            self._ok.inc(delivered)
            self._delivered.inc(delivered)
            self.observer.attempted(dest_id, self.destination_type, pending[0].workspace_id, delivered,
                                    [o.error for o in outcomes if not o.ok], [o.status for o in outcomes if not o.ok])
            self._record(breaker, len(retry) < len(pending) or not pending)
            if not retry:
                return
            log.warning("delivery to %s failed: %s", dest_id, retry[0][1].error,
                        extra={"destination_id": dest_id, "workspace_id": retry[0][0].workspace_id,
                               "attempt": retry[0][0].attempts})
            attempt += 1
            retry_after = max((o.retry_after or 0.0) for _, o in retry)
            delay = backoff(attempt, self.cfg.retry_base_s, self.cfg.retry_max_backoff_s, retry_after)
            pending = [d for d, _ in retry]
            if attempt > self.cfg.inline_retries or breaker.is_open or delay > self.cfg.deadline_s / 2:
                await self._park(pending, retry[0][1].error, retry_after)
                return
            await asyncio.sleep(delay)

    async def _send(self, dest_id: str, pending: list[Delivery]) -> list[Outcome]:
        """The sink's outcomes; an exception (a bug, a malformed record) becomes a retryable
        failure, so the record is parked and in the end dead-lettered instead of wedging
        its partition in an endless retry of the same batch."""
        try:
            return await self.sink.send(self._destination(pending[0].destination), pending)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("sink error for %s", dest_id, extra={"destination_id": dest_id})
            return [Outcome(False, True, f"internal error: {type(e).__name__}: {e}"[:300])] * len(pending)

    async def _park(self, items: list[Delivery], error: str, retry_after: float | None) -> None:
        """Hand deliveries to the retry topic (or, past the horizon, the dead-letter topic),
        all in one durable send."""
        now = now_ms()
        parked, parked_items, expired = [], [], []
        for d in items:
            if not d.first_attempt_ms:
                d.first_attempt_ms = now
            if d.errors[-1:] != [error]:
                d.errors.append(error)
            if (now - d.first_attempt_ms) / 1000 >= self.cfg.retry_horizon_s:
                expired.append(d)
                continue
            delay = backoff(max(d.attempts, 1), self.cfg.retry_base_s * 5, self.cfg.retry_max_backoff_s, retry_after)
            parked_items.append(d)
            parked.append((self.cfg.retry_topic, d.destination_id.encode(), d.message,
                           d.headers(type=self.destination_type.encode(), next=str(now + int(delay * 1000)).encode())))
        if expired:
            await self.dead_letter(expired, f"retry horizon of {self.cfg.retry_horizon_s:g}s exceeded; "
                                             f"last error: {error}")
        if parked:
            results = await self.produce(parked)
            refused = [(d, r) for d, r in zip(parked_items, results) if isinstance(r, Refused)]
            for d, r in refused:
                await self.dead_letter([d], f"could not be parked: {r.reason}")
            for d in items:
                d.settled = True
            self._parked.inc(len(parked) - len(refused))
            for d, r in zip(parked_items, results):
                if not isinstance(r, Refused):
                    self.observer.parked(d.destination_id, 1)

    async def dead_letter(self, items: list[Delivery], error: str) -> None:
        dead_at = str(now_ms()).encode()
        records = [(self.cfg.dead_letter_topic, d.destination_id.encode(), d.message,
                    d.headers(type=self.destination_type.encode(), err=error[:2000].encode(), dead=dead_at))
                   for d in items]
        results = await self.produce(records)
        cut = [cut_down(rec, r.reason) for rec, r in zip(records, results) if isinstance(r, Refused)]
        if cut:
            # The full record does not fit: keep its envelope and a prefix, so the operator
            # still sees what it was and why (the destination has not got it).
            await self.produce_durably(cut)
        for d in items:
            d.settled = True
            log.error("delivery dead-lettered for %s: %s", d.destination_id, error,
                      extra={"destination_id": d.destination_id, "workspace_id": d.workspace_id,
                             "event_id": d.event_id})
        self._dead.inc(len(items))
        for d in items:
            self.observer.dead_lettered(d.destination_id, d.workspace_id, 1, error)

    def _sweep_idle(self) -> None:
        """Forget destinations unused for a while (their limit and, if closed, breaker), so
        a worker that has seen every tenant once does not keep them all for ever."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(60.0, self.cfg.idle_evict_s)
        for dest_id, used in list(self.last_used.items()):
            if now - used < self.cfg.idle_evict_s:
                continue
            breaker = self.breakers.get(dest_id)
            limit = self.limits.get(dest_id)
            if (breaker is not None and breaker.is_open) or (limit is not None and limit.locked()):
                continue
            self.breakers.pop(dest_id, None)
            self.limits.pop(dest_id, None)
            del self.last_used[dest_id]

    def _destination(self, raw: bytes) -> dict:
        parsed = self._parsed.get(raw)
        if parsed is None:
            parsed = self._parsed[raw] = orjson.loads(raw)
            if len(self._parsed) > PARSED_DESTINATIONS:
                del self._parsed[next(iter(self._parsed))]  # the oldest; a miss only costs a parse
        return parsed

    def _record(self, breaker: Breaker, ok: bool) -> None:
        was_open = breaker.is_open
        breaker.record(ok, self.cfg.breaker_failures)
        if breaker.is_open != was_open:
            self._breakers_changed = True

    def _export_breakers(self) -> None:
        if not self._breakers_changed:
            return
        self._breakers_changed = False
        metrics.breakers_open.labels(self.destination_type).set(sum(1 for b in self.breakers.values() if b.is_open))


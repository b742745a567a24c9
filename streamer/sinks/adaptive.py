"""An adaptive (AIMD) cap on one destination's concurrent requests.

A fixed cap is either too low for a healthy destination that a whole partner streams to
(its requests queue behind each other while the store could take many more) or too high
for a struggling one (it gets hammered). This one grows by one request per window of
successes and halves when the destination signals overload (5xx, SlowDown, 429,
timeouts, connection errors, answers slower than the sink tolerates, requests still
waiting when the engine's deadline cancels them), like TCP congestion control. Each destination has its own,
so one tenant's slow store never takes another's share.

`Aimd` is the arithmetic alone (no asyncio, unit-tested); `AdaptiveLimit` is the gate.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Aimd:
    """Additive increase (+1 per `limit` successes), multiplicative decrease (halve, once per
    window: requests that started before the last decrease do not decrease it again, so a
    burst of failures from one window of requests counts once)."""

    __slots__ = ("limit", "minimum", "maximum", "epoch")

    def __init__(self, initial: int, minimum: int = 1, maximum: int = 32) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.limit = float(max(minimum, min(initial, maximum)))
        self.epoch = 0  # bumped at every decrease

    @property
    def allowed(self) -> int:
        return int(self.limit)

    def success(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)

    def overload(self, started_epoch: int) -> None:
        if started_epoch != self.epoch:
            return  # this window already halved the limit
        self.limit = max(float(self.minimum), self.limit / 2)
        self.epoch += 1


class AdaptiveLimit:
    """An asyncio gate admitting `Aimd.allowed` requests at once.

    Usage: `epoch = await gate.acquire()`, then `gate.release(epoch, ok=..., overload=...)`.
    Waiters are served first come, first served."""

    __slots__ = ("aimd", "in_flight", "_waiters")

    def __init__(self, initial: int, maximum: int) -> None:
        self.aimd = Aimd(initial, 1, maximum)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> int:
        if self.in_flight < self.aimd.allowed and not self._waiters:
            self.in_flight += 1
            return self.aimd.epoch
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() counted us in before waking us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release_slot()  # we were admitted but will not run: hand the slot on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return self.aimd.epoch

    def release(self, epoch: int, *, ok: bool, overload: bool) -> None:
        """`overload` (a retryable error, a timeout, a slow answer) shrinks the cap even
        when the request succeeded; a plain success grows it; a permanent error (a wrong
        bucket or key) says nothing about load and leaves it."""
        if overload:
            self.aimd.overload(epoch)
        elif ok:
            self.aimd.success()
        self._release_slot()

    def _release_slot(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.aimd.allowed:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

"""Batches out of Faust agents without Faust's per-message machinery.

Profiling the worker (docs/performance.md) showed that most of its CPU went to moving each
message through Faust, not to processing it: the fetch loop raced every message against
flow suspension with `Service.wait_first` (four new tasks a message), and `noack_take`
pushed every event through the stream's processor chain and a buffer handshake. Both are
per-message costs paid on both hops (raw topics, then delivery topics).

Two small, contained replacements keep every Faust guarantee the agents rely on (group
membership, rebalances, flow control, acks and commits) and drop that per-message cost:

* `Consumer.wait_first` takes a fast path for the one call the fetch loop makes per message.
* `batches()` takes events straight from the agent's subscription queue in bulk.

On top of those, `overlapped()` lets an agent work on more than one batch at a time.

`tests/test_batching.py` pins the Faust internals these rely on, so an upgrade of
faust-streaming that changes them fails the tests instead of silently misbehaving.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from streamer import metrics

# How often a lingering batch looks for more events. A wait per event (asyncio.wait_for)
# would create a task per event; a short sleep costs one wakeup per slice however many
# events arrive in it.
POLL_S = 0.005


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with a cheaper per-message step in its fetch loop.

    Faust's fetch loop (`Consumer._drain_messages`) delivers each message with
    `await self.wait_first(callback(message), self.suspend_flow.wait())`, so that a
    rebalance suspending the flow abandons a delivery stuck behind flow control.
    `wait_first` wraps both awaitables, plus the service's stopped and crashed events, in
    new tasks: four tasks a message.

    The callback (the conductor putting the event on its subscribers' queues) almost
    always finishes without waiting for anything. So it is started here, in the fetch
    loop's own task: if it finishes in that first step, nothing can have been suspended
    in between and there is nothing to race. Only if it has to wait (flow control, a
    full queue) does the rest of it run under Faust's own `wait_first`, exactly as before.
    """

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        # Counted because every rebalance pauses the whole group: the count shows whether
        # static membership (STREAMER_INSTANCE_ID) keeps restarts from causing them.
        metrics.group_assignments.inc()
        metrics.group_generation.set(generation_id)
        await super().on_partitions_assigned(assigned, generation_id)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if (len(coros) == 2 and timeout is None and asyncio.iscoroutine(coros[0])
                and asyncio.iscoroutine(coros[1]) and not self.suspend_flow.is_set()):
            callback, suspended = coros
            try:
                waiting_on = callback.send(None)
            except StopIteration as done:
                suspended.close()  # never started; closing it avoids a "never awaited" warning
                return WaitResults([callback], [done.value], False)
            return await super().wait_first(_Started(callback, waiting_on), suspended)
        return await super().wait_first(*coros, timeout=timeout)


class _Started:
    """An awaitable that continues a coroutine already stepped once by hand.

    `waiting_on` is what the coroutine's first step yielded (the future it waits for);
    this hands it to the task that awaits us, then relays what that task sends or throws
    (a cancellation, say) into the coroutine, as `await coroutine` would have done.
    """

    def __init__(self, coro: Any, waiting_on: Any) -> None:
        self.coro, self.waiting_on = coro, waiting_on

    def __await__(self):
        coro, yielded = self.coro, self.waiting_on
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: B036 - relayed into the coroutine, not swallowed
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


class Producer(faust_aiokafka.Producer):
    """Faust's producer, idempotent: Faust 0.15.3 enables idempotence only inside
    transactions, but a broker failover makes the producer retry a batch whose ack was lost,
    and without idempotence the retry is written twice (acks=all is set on the app)."""

    def _settings_extra(self):
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


class App(faust.App):
    """A Faust app with `Consumer` and `Producer` above; everything else is stock Faust."""

    def _new_transport(self):
        return Transport(self.conf.broker_consumer, self)

    def _new_producer_transport(self):
        return Transport(self.conf.broker_producer, self)


async def _next_batch(queue: Any, max_: int, linger_s: float) -> list[faust.EventT] | None:
    """The next batch from a subscription queue, or None once Faust stopped the stream.

    A batch starts with the first event that arrives and takes everything queued up to
    `max_`; if it is not full it lingers up to `linger_s` for more, so a backlog moves in
    full batches with no waiting and a trickle waits at most the linger.
    """
    try:
        batch = [await queue.get()]
        deadline = time.monotonic() + linger_s
        while True:
            while len(batch) < max_ and not queue.empty():
                batch.append(queue.get_nowait())
            left = deadline - time.monotonic()
            if len(batch) >= max_ or left <= 0:
                return batch
            await asyncio.sleep(min(left, POLL_S))
    except StopAsyncIteration:
        # Faust ends its streams by throwing this into their queues when the agent stops.
        # The events taken so far are not acked, so they are read again.
        return None


def _queue(stream: faust.StreamT) -> Any:
    """The agent's subscription queue, the one Faust's conductor fills. Iterating the
    channel subscribes it, as iterating the stream would: do it once per agent."""
    return aiter(stream.channel).queue


async def batches(stream: faust.StreamT, max_: int, linger_s: float) -> AsyncIterator[list[faust.EventT]]:
    """Batches of up to `max_` events (see `_next_batch`), acked only after the loop body
    finished with them.

    Events are taken from the agent's own queue as `Stream.noack_take` would, but in
    bulk, and acked through `Stream.ack` as before. A batch that is cancelled (shutdown,
    rebalance) is never acked, so it is read again: at least once. Not `take_events`,
    which acks in a `finally`.
    """
    queue = _queue(stream)
    while (batch := await _next_batch(queue, max_, linger_s)) is not None:
        yield batch
        for event in batch:
            await stream.ack(event)


async def overlapped(stream: faust.StreamT, max_: int, linger_s: float,
                     handle: Callable[[list[faust.EventT]], Awaitable[None]], depth: int) -> None:
    """Run `handle` on up to `depth` batches at once; each batch is acked when its own
    handler has returned.

    One batch at a time leaves the worker idle while a batch waits on I/O (broker acks,
    the slowest destination of the batch). Acks may now complete out of order, which Faust
    handles: it commits a partition only up to its lowest unacked offset. So this trades
    order between batches (the spec promises none) for throughput, never at-least-once.
    A batch is taken only once a slot is free, so it holds everything that arrived while
    the slots were busy and no event waits in a formed batch. A handler that raises stops
    the agent (at its next batch) without acking; on shutdown the in-flight handlers are
    cancelled and their batches, unacked, are read again.
    """
    queue = _queue(stream)
    slots = asyncio.Semaphore(depth)
    running: set[asyncio.Task] = set()

    async def run(batch: list[faust.EventT]) -> None:
        try:
            await handle(batch)
            for event in batch:
                await stream.ack(event)
        finally:
            slots.release()

    try:
        while True:
            await slots.acquire()
            for task in [t for t in running if t.done()]:
                running.discard(task)
                task.result()  # a handler's bug must stop the agent, not vanish
            # Linger only while another batch is in flight: an idle agent starts on what it
            # has at once (low latency when traffic is light), a busy one lets the next
            # batch fill meanwhile (fewer, fuller requests when it is heavy).
            busy = any(not t.done() for t in running)
            batch = await _next_batch(queue, max_, linger_s if busy else 0.0)
            if batch is None:
                return
            running.add(asyncio.create_task(run(batch)))
    finally:
        for task in running:
            task.cancel()

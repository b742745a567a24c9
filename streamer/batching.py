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
* `RawSchema` turns a record into an event without Faust's codec registry: every topic
  the worker reads carries bytes it parses itself.

On top of those, `overlapped()` lets an agent work on more than one batch at a time,
acking in offset order (`streamer.acks`).

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
from mode.utils.queues import ThrowableQueue

from streamer.acks import OrderedAcks
from streamer.idempotence import IdempotentProducer
from streamer.liveness import Progress

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

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

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


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer waits for fuller fetch responses.

    Faust builds the consumer with aiokafka's `fetch_min_bytes=1`, so the broker answers a
    fetch as soon as one record is there. A delivery topic fills while the worker reads it,
    so each fetch brought a few records, and each went through the consumer thread, the
    conductor and a batch of its own. With `App.fetch_min_bytes` (64 KiB by default) the
    broker gathers a fuller response, waiting at most `App.fetch_max_wait_ms`: one worker
    moved 39% more events a second (docs/performance.md, Ninth round). Faust has no setting
    for either, so both are set on the consumer before it starts, which is when aiokafka
    hands them to its fetcher (tests/test_batching.py pins that).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_min_bytes = self.app.fetch_min_bytes
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


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


class RawSchema(faust.Schema):
    """A topic's keys and values as the broker's bytes, exactly what the `raw` codec gives,
    without the codec registry in between.

    Faust decodes every record through the registry (`loads_key`, `loads_value`, codec
    lookups, `Model._maybe_reconstruct`) even for `raw`, which returns the bytes unchanged:
    about a tenth of the conductor's time per message in the worker's profile, on both hops.
    With no key or value type there is nothing to decode, so nothing can fail to decode."""

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, on_key_decode_error: Any = None, on_value_decode_error: Any = None,
                default_propagate: bool = False) -> Callable[..., Awaitable[faust.EventT]]:
        if self.key_type is not None or self.value_type is not None:
            raise TypeError("RawSchema is for untyped topics (bytes in, bytes out)")
        event_type = app.conf.Event  # what app.create_event builds, looked up once, not per record

        async def decode(message: Any, *, propagate: bool = default_propagate) -> faust.EventT:
            return event_type(app, message.key, message.value, message.headers, message)

        return decode


class Producer(faust_aiokafka.Producer):
    """Faust's producer, idempotent with acks=all, on `IdempotentProducer`.

    Idempotence keeps a batch resent after a broker failover from being written twice.
    The stock aiokafka idempotent producer would wedge a partition for good after the broker
    refuses one record (a poison record can cause that; see `streamer/idempotence.py`)."""

    def _settings_extra(self):
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    @property
    def _producer_type(self):
        return IdempotentProducer


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


class ByteBoundedQueue(ThrowableQueue):
    """An agent's subscription queue, full at `max_bytes` of record values as well as at its
    count. Faust bounds the queue by count only (`stream_buffer_maxsize`), which holds 8,192
    events: fine for 2 KB events, not for 40 MB ones. When full, Faust's conductor waits
    to put the next event, so the fetch loop stops taking records from the consumer."""

    def __init__(self, *args: Any, max_bytes: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_bytes = max_bytes
        self.bytes = 0

    def _put(self, item: Any) -> None:
        self.bytes += _value_size(item)
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= _value_size(item)
        return item

    def full(self) -> bool:
        return super().full() or (self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def clear(self) -> None:
        super().clear()
        self.bytes = 0


def _value_size(item: Any) -> int:
    message = getattr(item, "message", None)
    return len(message.value or b"") if message is not None and isinstance(message.value, bytes) else 0


class App(faust.App):
    """A Faust app with `Consumer` and `Producer` above, whose agents' queues are bounded
    by bytes (`queue_max_bytes`) and whose fetches wait for fuller responses
    (`fetch_min_bytes`, `fetch_max_wait_ms`); everything else is stock Faust."""

    queue_max_bytes: int = 0
    fetch_min_bytes: int = 1  # aiokafka's defaults, as Faust leaves them; see ConsumerThread
    fetch_max_wait_ms: int = 1500

    def _new_transport(self):
        return Transport(self.conf.broker_consumer, self)

    def _new_producer_transport(self):
        return Transport(self.conf.broker_producer, self)


    def FlowControlQueue(self, maxsize: int | None = None, *, clear_on_resume: bool = False) -> ThrowableQueue:
        return ByteBoundedQueue(maxsize=maxsize, flow_control=self.flow_control, clear_on_resume=clear_on_resume,
                                max_bytes=self.queue_max_bytes)


def message_size(event: faust.EventT) -> int:
    return len(event.message.value or b"")


async def _next_batch(queue: Any, max_: int, linger_s: float, max_bytes: int | None = None,
                      size: Callable[[Any], int] = message_size) -> list[faust.EventT] | None:
    """The next batch from a subscription queue, or None once Faust stopped the stream.

    A batch starts with the first event that arrives and takes everything queued up to
    `max_` events (and, with `max_bytes`, up to that many value bytes: 40 MB events come one
    or two at a time, so a batch's memory stays bounded); if it is not full it lingers up to
    `linger_s` for more, so a backlog moves in full batches with no waiting and a trickle
    waits at most the linger.
    """
    try:
        first = await queue.get()
        batch = [first]
        used = size(first) if max_bytes else 0
        deadline = time.monotonic() + linger_s
        while True:
            while len(batch) < max_ and not queue.empty() and (not max_bytes or used < max_bytes):
                if max_bytes:
                    # Peek (asyncio.Queue keeps its items in `_queue`): an event that would
                    # take the batch over its bytes starts the next batch instead.
                    waiting = getattr(queue, "_queue", None)
                    if waiting and used + size(waiting[0]) > max_bytes:
                        return batch
                event = queue.get_nowait()
                batch.append(event)
                if max_bytes:
                    used += size(event)
            left = deadline - time.monotonic()
            if len(batch) >= max_ or left <= 0 or (max_bytes and used >= max_bytes):
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
                     handle: Callable[[list[faust.EventT]], Awaitable[None]], depth: int,
                     max_bytes: int | None = None, progress: Progress | None = None,
                     max_inflight_bytes: int | None = None) -> None:
    """Run `handle` on up to `depth` batches at once, acking in offset order.

    One batch at a time leaves the worker idle while a batch waits on I/O (broker acks,
    the slowest destination of the batch), so batches overlap and finish out of order. An
    event is acked only once every event taken before it from its partition is done
    (`OrderedAcks`): Faust's own gap handling would commit past an event still in flight
    (faust-streaming issue 606). Order of *processing* between batches is given up (the
    spec promises none); the commit order never is.

    A batch is taken only once a slot is free, so it holds everything that arrived while
    the slots were busy and no event waits in a formed batch. `handle` must not raise for
    bad records (see `isolation.isolated`); if it raises anyway the agent stops at its next
    batch without acking. On shutdown the in-flight handlers are cancelled and their
    batches, unacked, are read again.

    `max_inflight_bytes`: no new batch is taken while the batches in flight hold this many
    value bytes, so a deep agent (many batches that mostly wait, as lingering delivery
    batches do) holds no more memory than a shallow one of big batches would.
    """
    queue = _queue(stream)
    slots = asyncio.Semaphore(depth)
    running: set[asyncio.Task] = set()
    order = OrderedAcks()
    inflight_bytes = 0
    finished = asyncio.Event()

    async def run(batch: list[faust.EventT], entries: list, size: int) -> None:
        nonlocal inflight_bytes
        token = progress.begin() if progress is not None else None
        try:
            await handle(batch)
            for event in order.done(entries):
                await stream.ack(event)
        finally:
            if token is not None:
                progress.end(token)
            inflight_bytes -= size
            finished.set()
            slots.release()

    try:
        while True:
            await slots.acquire()
            while max_inflight_bytes and inflight_bytes >= max_inflight_bytes:
                finished.clear()
                await finished.wait()
            for task in [t for t in running if t.done()]:
                running.discard(task)
                task.result()  # a handler's bug must stop the agent, not vanish
            # Linger only while another batch is in flight: an idle agent starts on what it
            # has at once (low latency when traffic is light), a busy one lets the next
            # batch fill meanwhile (fewer, fuller requests when it is heavy).
            busy = any(not t.done() for t in running)
            batch = await _next_batch(queue, max_, linger_s if busy else 0.0, max_bytes)
            if batch is None:
                return
            # Registered here, in the order taken, before the handler can finish.
            entries = order.take(batch)
            size = sum(message_size(e) for e in batch) if max_inflight_bytes else 0
            inflight_bytes += size
            running.add(asyncio.create_task(run(batch, entries, size)))
    finally:
        for task in running:
            task.cancel()

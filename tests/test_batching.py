"""`streamer.batching`: the bulk batch reader and the fetch loop's fast path.

The end-to-end tests run every agent on these; here the behaviour is pinned in isolation,
and so are the Faust internals they rely on, so that an upgrade changing them fails here.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid

import faust
import pytest
from faust.transport import consumer as faust_consumer
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streamer.batching import App, Consumer, batches, overlapped


class FakeStream:
    """What `batches` uses of a Faust stream: `.channel` (iterated once) and `.ack`."""

    def __init__(self) -> None:
        self.queue: ThrowableQueue = ThrowableQueue(maxsize=10_000, flow_control=FlowControlEvent())
        self.acked: list[int] = []
        self.subscriptions = 0
        stream = self

        class Channel:
            def __aiter__(self):
                stream.subscriptions += 1
                return self

            async def __anext__(self):
                raise AssertionError("batches reads the queue, not the channel")

            queue = self.queue

        self.channel = Channel()

    async def ack(self, event: int) -> bool:
        self.acked.append(event)
        return True


async def test_backlog_moves_in_full_batches_and_acks_after_the_body():
    stream = FakeStream()
    for i in range(1_200):
        stream.queue.put_nowait(i)
    seen, acked_when_seen = [], []
    it = batches(stream, 500, 0.2)
    for _ in range(2):
        batch = await it.__anext__()
        seen.append(batch)
        acked_when_seen.append(len(stream.acked))
    t0 = time.monotonic()
    seen.append(await it.__anext__())
    lingered = time.monotonic() - t0
    acked_when_seen.append(len(stream.acked))
    assert [len(b) for b in seen] == [500, 500, 200]
    assert [e for b in seen for e in b] == list(range(1_200))
    # acks of a batch happen only when the body asks for the next one
    assert acked_when_seen == [0, 500, 1_000]
    assert lingered >= 0.15  # the partial batch waited for more (not a timing target)
    assert stream.subscriptions == 1
    await it.aclose()


async def test_trickle_is_batched_within_the_linger():
    stream = FakeStream()
    it = batches(stream, 500, 0.3)

    async def trickle():
        for i in range(5):
            stream.queue.put_nowait(i)
            await asyncio.sleep(0.02)

    feeder = asyncio.create_task(trickle())
    batch = await it.__anext__()
    await feeder
    assert batch == [0, 1, 2, 3, 4]
    await it.aclose()


async def test_a_cancelled_batch_is_not_acked():
    stream = FakeStream()
    for i in range(10):
        stream.queue.put_nowait(i)

    async def agent():
        async for batch in batches(stream, 500, 0.01):
            await asyncio.sleep(10)  # delivering, when the worker stops

    task = asyncio.create_task(agent())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.acked == []


async def test_faust_stopping_the_stream_ends_the_batches_without_acking():
    stream = FakeStream()
    stream.queue.put_nowait(1)
    it = batches(stream, 500, 0.5)
    pending = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.05)
    stream.queue._throw(StopAsyncIteration())  # what Faust does to a stream's channel on stop
    with pytest.raises(StopAsyncIteration):
        await pending
    assert stream.acked == []


class Ev:
    """An event as `overlapped` sees it: `.message.tp` and `.message.offset`."""

    def __init__(self, offset: int, tp: str = "raw-0") -> None:
        self.message = type("M", (), {"tp": tp, "offset": offset, "value": b"x"})()

    def __repr__(self) -> str:
        return f"Ev({self.message.offset})"


async def test_overlapped_runs_up_to_depth_batches_and_acks_in_offset_order():
    stream = FakeStream()
    events = [Ev(i) for i in range(40)]
    for e in events:
        stream.queue.put_nowait(e)
    running, most, release = 0, 0, {}

    async def handle(batch):
        nonlocal running, most
        running += 1
        most = max(most, running)
        gate = release[batch[0].message.offset] = asyncio.Event()
        await gate.wait()
        running -= 1

    agent = asyncio.create_task(overlapped(stream, 10, 0.01, handle, depth=2))
    await asyncio.sleep(0.1)
    assert sorted(release) == [0, 10] and stream.acked == []  # two in flight, the third waits
    release[10].set()  # the second finishes first: held back, 0..9 are still in flight
    await asyncio.sleep(0.1)
    assert stream.acked == [] and sorted(release) == [0, 10, 20]
    release[0].set()  # now both are acked, in offset order
    await asyncio.sleep(0.1)
    assert stream.acked == events[:20]
    agent.cancel()  # shutdown: batches in flight are not acked
    with pytest.raises(asyncio.CancelledError):
        await agent
    await asyncio.sleep(0.05)
    assert stream.acked == events[:20] and most == 2


async def test_overlapped_takes_no_batch_while_the_batches_in_flight_hold_the_byte_bound():
    """A deep agent (lingering delivery batches) holds no more bytes than the bound: with 4
    slots and room for 20 bytes, only two batches of 10 one-byte events run at once."""
    stream = FakeStream()
    events = [Ev(i) for i in range(40)]
    for e in events:
        stream.queue.put_nowait(e)
    release: dict[int, asyncio.Event] = {}

    async def handle(batch):
        gate = release[batch[0].message.offset] = asyncio.Event()
        await gate.wait()

    agent = asyncio.create_task(overlapped(stream, 10, 0.01, handle, depth=4, max_inflight_bytes=20))
    await asyncio.sleep(0.1)
    assert sorted(release) == [0, 10]  # two slots free, but the bytes are full
    release[0].set()
    await asyncio.sleep(0.1)
    assert sorted(release) == [0, 10, 20] and stream.acked == events[:10]
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent


async def test_overlapped_surfaces_a_handler_that_raises():
    stream = FakeStream()
    for i in range(30):
        stream.queue.put_nowait(Ev(i))

    async def handle(batch):
        if batch[0].message.offset == 0:
            raise RuntimeError("bug in a handler")

    with pytest.raises(RuntimeError, match="bug in a handler"):
        await asyncio.wait_for(overlapped(stream, 10, 0.01, handle, depth=2), 5)
    assert stream.acked == []  # nothing after the failed batch is acked either


async def test_fetch_loop_runs_a_callback_that_does_not_wait_in_its_own_task():
    app = App("test-batching-fast-path", broker="kafka://127.0.0.1:1")
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    calls = []

    async def callback():
        calls.append(asyncio.current_task())
        return "delivered"

    result = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
    assert result.results == ["delivered"] and not result.stopped
    assert calls == [asyncio.current_task()]  # no task per message


async def test_fetch_loop_races_a_waiting_callback_against_suspension_as_faust_does():
    app = App("test-batching-slow-path", broker="kafka://127.0.0.1:1")
    consumer = app.consumer
    gate = asyncio.Event()
    cleaned_up = []

    async def callback():
        try:
            await gate.wait()  # e.g. behind flow control
            return "delivered"
        finally:
            cleaned_up.append(True)

    # it waits, then is released: the rest of it runs and its result comes back
    waiting = asyncio.create_task(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    gate.set()
    result = await waiting
    assert result.results == ["delivered"] and cleaned_up == [True]

    # it waits, then the flow is suspended (a rebalance): abandoned and cancelled, as in Faust
    gate.clear()
    cleaned_up.clear()
    waiting = asyncio.create_task(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.05)
    consumer.stop_flow()
    result = await waiting
    assert result.done and "delivered" not in result.results
    await asyncio.sleep(0.05)
    assert cleaned_up == [True]  # the abandoned callback was cancelled, not left hanging


def test_faust_internals_this_relies_on():
    # the fetch loop's per-message call that Consumer.wait_first short-cuts
    drain = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "self.wait_first(callback(message),self.suspend_flow.wait())" in "".join(drain.split())
    # an iterated topic is a subscription whose queue the conductor fills
    from faust.topics import Topic
    assert "self.app.topics.add" in inspect.getsource(Topic.__aiter__)
    assert "self.queue.get()" in inspect.getsource(faust.Channel.__anext__)
    # Faust ends a stream by throwing StopAsyncIteration into its channel's queue
    from faust.agents import actor
    assert "self.stream.channel)._throw(StopAsyncIteration())" in inspect.getsource(actor)
    # RawSchema builds the event as create_event does, and the topic compiles its decode once
    assert "self.conf.Event(self,key,value,headers,message)" in "".join(inspect.getsource(faust.App.create_event).split())
    assert "self.decode=self.schema.compile(" in "".join(inspect.getsource(Topic._compile_decode).split())


class Big:
    """An event whose value is `size` bytes."""

    def __init__(self, offset: int, size: int) -> None:
        self.message = type("M", (), {"tp": "raw-0", "offset": offset, "value": b"x" * size})()


async def test_a_batch_ends_at_its_byte_limit_and_the_queue_is_full_at_its_own():
    """40 MB events come one or two at a time, however many a batch may hold by count."""
    from streamer.batching import ByteBoundedQueue, _next_batch

    queue = ByteBoundedQueue(maxsize=8192, flow_control=FlowControlEvent(), max_bytes=250)
    for i in range(3):
        queue.put_nowait(Big(i, 100))
    assert queue.full() and queue.qsize() == 3  # by bytes, far under its count
    batch = await _next_batch(queue, 500, 0.0, max_bytes=250)
    assert [e.message.offset for e in batch] == [0, 1]  # a third would pass 250 bytes
    assert not queue.full() and queue.bytes == 100
    assert [e.message.offset for e in await _next_batch(queue, 500, 0.0, max_bytes=250)] == [2]


async def test_raw_schema_gives_the_events_the_raw_codec_gives():
    from faust.types import TP
    from faust.types.tuples import Message

    from streamer.batching import RawSchema

    app = App("raw-schema-test", broker="kafka://127.0.0.1:1")
    stock = app.topic("t", key_serializer="raw", value_serializer="raw")
    ours = app.topic("t", schema=RawSchema())
    for key, value, headers in [(b"ws-1", b'{"a":1}', [("type", b"http")]), (None, b"\xff\x00", []),
                                (b"k", None, None), (b"", b"", [])]:
        message = Message(topic="t", partition=0, offset=7, timestamp=0.0, timestamp_type=0, headers=headers,
                          key=key, value=value, checksum=None, tp=TP("t", 0))
        a, b = await stock.decode(message), await ours.decode(message)
        assert (b.key, b.value, b.headers, b.message) == (a.key, a.value, a.headers, a.message)
        assert type(b) is type(a)
    with pytest.raises(TypeError):  # a typed topic needs Faust's decoding
        app.topic("typed", schema=RawSchema(), value_type=dict)


async def test_the_workers_consumer_waits_for_fuller_fetches(kafka):
    """Faust builds its aiokafka consumer with fetch_min_bytes=1 and offers no setting;
    `ConsumerThread` sets the app's values, which aiokafka hands to its fetcher at start."""
    saved = App.fetch_min_bytes, App.fetch_max_wait_ms
    App.fetch_min_bytes, App.fetch_max_wait_ms = 65536, 100
    try:
        app = App(f"fetch-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka}")
        consumer = app.consumer
        aio = consumer._thread._create_worker_consumer(consumer.transport)
    finally:
        App.fetch_min_bytes, App.fetch_max_wait_ms = saved
    await aio.start()
    try:
        assert (aio._fetcher._fetch_min_bytes, aio._fetcher._fetch_max_wait_ms) == (65536, 100)
    finally:
        await aio.stop()

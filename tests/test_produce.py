"""Durable produce against the real broker (its default 100 MiB `socket.request.max.bytes`).

aiokafka packs every ready batch for one broker into one produce request, with no bound on
their sum: three 38 MB records for three partitions made a 114 MB request that the broker
dropped, and the send was retried for ever (issue 18). `DurableProducer` bounds the bytes in
flight, and treats a refusal no retry can fix as final.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from streamer.idempotence import IdempotentProducer
from streamer.produce import DurableProducer, Refused, cut_down, record_size
from tests.support import consume

MB = 1024 * 1024
BUDGET = 64 * MB  # the default; with no bound (1 GiB) the broker drops the request and this test fails


async def _topic(kafka: str, partitions: int, max_bytes: int) -> str:
    name = f"produce-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs={"max.message.bytes": str(max_bytes)})])
    finally:
        await admin.close()
    return name


@pytest.fixture
async def producer(kafka):
    # A long linger makes the records of one send_all ready together, as a busy producer's
    # are: aiokafka then drains them into one request to the broker.
    p = AIOKafkaProducer(bootstrap_servers=kafka, max_request_size=52 * MB, linger_ms=500, acks="all",
                         request_timeout_ms=20_000)
    await p.start()
    yield p
    await p.stop()


def durable(p: AIOKafkaProducer, budget: int = 64 * MB) -> DurableProducer:
    async def send(topic, key, value, headers):
        # Keys "p<n>" pin partition n, so the test controls how records spread.
        partition = int(key[1:]) if key and key[:1] == b"p" else None
        return await p.send(topic, value=value, key=key, headers=headers, partition=partition)

    return DurableProducer(send, budget, first_delay_s=0.2, max_delay_s=1.0)


async def test_large_records_for_several_partitions_never_share_an_oversized_request(kafka, producer, caplog):
    # While the first record's request is in flight, the next three wait in the producer,
    # then leave together: 114 MB in one request, unless something bounds it.
    topic = await _topic(kafka, 4, 50 * MB)
    records = [(topic, f"p{i}".encode(), bytes([65 + i]) * (38 * MB), None) for i in (3, 0, 1, 2)]
    out = await asyncio.wait_for(durable(producer, BUDGET).send_all(records), 60)
    assert not any(isinstance(r, Refused) for r in out)
    # The broker took every request as sent: nothing was dropped and resent.
    assert not [r for r in caplog.records if "not acked by the broker" in r.getMessage()]
    assert {r.partition for r in out} == {0, 1, 2, 3}
    got = await consume(kafka, topic, 4, timeout=60)
    assert sorted(len(m.value) for m in got) == [38 * MB] * 4


async def test_a_record_the_broker_refuses_is_final_and_the_rest_are_delivered(kafka, producer):
    topic = await _topic(kafka, 1, 1 * MB)  # this topic takes at most 1 MB records
    records = [(topic, b"small-1", b"a" * 100, None), (topic, b"big", b"b" * (2 * MB), None),
               (topic, b"small-2", b"c" * 100, None)]
    out = await asyncio.wait_for(durable(producer).send_all(records), 60)
    assert isinstance(out[1], Refused) and "MessageSizeTooLarge" in out[1].reason
    assert not isinstance(out[0], Refused) and not isinstance(out[2], Refused)
    cut = cut_down(records[1], out[1].reason)
    assert record_size(cut) < 100_000
    (meta,) = await durable(producer).send_durably([cut])
    got = await consume(kafka, topic, 3, timeout=30)
    assert sorted(m.key for m in got) == [b"big", b"small-1", b"small-2"]
    big = next(m for m in got if m.key == b"big")
    assert dict(big.headers)["truncated"] == str(2 * MB).encode()


async def test_the_byte_budget_bounds_what_is_in_flight():
    in_flight, most = 0, 0
    release = asyncio.Event()

    async def send(topic, key, value, headers):
        nonlocal in_flight, most
        in_flight += len(value)
        most = max(most, in_flight)

        async def acked():
            await release.wait()
            nonlocal in_flight
            in_flight -= len(value)
            return "ok"

        return asyncio.ensure_future(acked())

    producer = DurableProducer(send, budget_bytes=100)
    task = asyncio.create_task(producer.send_all([("t", None, b"x" * 40, None)] * 5 + [("t", None, b"y" * 500, None)]))
    await asyncio.sleep(0.05)
    assert most <= 100  # two 40-byte records plus overhead fit; the rest wait
    release.set()
    assert await asyncio.wait_for(task, 5) == ["ok"] * 6
    assert producer.budget.used == 0


async def test_the_byte_budget_serves_waiters_in_order_and_survives_cancelled_ones():
    from streamer.produce import ByteBudget

    budget = ByteBudget(100)
    assert await budget.acquire(60) == 60
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        taken = await budget.acquire(size)
        order.append(name)
        await asyncio.sleep(0.01)
        budget.release(taken)

    big = asyncio.create_task(take("big", 90))  # waits for the first 60 to come back
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(budget.acquire(5))  # would fit now, but waits its turn
    small = asyncio.create_task(take("small", 10))
    await asyncio.sleep(0.01)
    assert order == [] and not small.done()  # a small record does not slip past the big one
    gone.cancel()
    budget.release(60)
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert order == ["big", "small"]
    assert await asyncio.gather(gone, return_exceptions=True) != [5]
    assert budget.used == 0 and await budget.acquire(500) == 100  # over the limit: all of it, alone
    budget.release(100)
    assert budget.used == 0


@pytest.mark.parametrize("idempotent", ["stock", "wound back"])
async def test_an_idempotent_producer_outlives_a_refused_record(kafka, idempotent):
    # aiokafka's idempotent producer gives a refused batch's sequence number away for good:
    # every later send to the partition is OutOfOrderSequenceNumber. IdempotentProducer winds
    # it back, as the Java client does. "stock" pins that the workaround is still needed.
    topic = await _topic(kafka, 1, 1 * MB)
    kind = AIOKafkaProducer if idempotent == "stock" else IdempotentProducer
    p = kind(bootstrap_servers=kafka, max_request_size=4 * MB, acks="all", enable_idempotence=True,
             request_timeout_ms=5_000)
    await p.start()
    try:
        assert (await (await p.send(topic, b"before", key=b"1"))).offset == 0
        with pytest.raises(MessageSizeTooLargeError):
            await (await p.send(topic, b"x" * (2 * MB), key=b"2"))
        after = [await p.send(topic, b"after-%d" % i, key=b"3") for i in range(3)]
        if idempotent == "stock":
            with pytest.raises((OutOfOrderSequenceNumber, KafkaError)):
                await asyncio.wait_for(asyncio.gather(*after), 15)
            return
        assert [m.offset for m in await asyncio.wait_for(asyncio.gather(*after), 15)] == [1, 2, 3]
    finally:
        await p.stop()
    got = await consume(kafka, topic, 4, timeout=30)
    assert [m.value for m in got] == [b"before", b"after-0", b"after-1", b"after-2"]

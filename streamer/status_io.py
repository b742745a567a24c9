"""Reading the destination status topic: every worker tails it (the notifier needs every
worker's rows), and `streamer status` reads it once. One compacted partition, read with a
group-less consumer from the beginning, like the settings table (streamer/settings/view.py)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.kafka_client import KafkaSecurity, client_kwargs
from streamer.status import StatusTable

log = logging.getLogger(__name__)


class StatusTail:
    def __init__(self, bootstrap_servers: str, topic: str, security: KafkaSecurity | None = None):
        self.table = StatusTable()
        self.caught_up = asyncio.Event()  # read up to the end offset seen at start
        self._bootstrap, self._security = bootstrap_servers, security
        self._tp = TopicPartition(topic, 0)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                          enable_auto_commit=False, **client_kwargs(self._security))
        await self._consumer.start()
        self._consumer.assign([self._tp])
        self._consumer.seek(self._tp, (await self._consumer.beginning_offsets([self._tp]))[self._tp])
        self._task = asyncio.create_task(self._run(), name="status-tail")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        target = (await self._consumer.end_offsets([self._tp]))[self._tp]
        while True:
            try:
                batches = await self._consumer.getmany(self._tp, timeout_ms=500, max_records=5000)
                for msg in batches.get(self._tp, ()):
                    self.table.apply(msg.key, msg.value)
                if not self.caught_up.is_set() and await self._consumer.position(self._tp) >= target:
                    self.caught_up.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker restart: keep what was read, retry
                log.warning("status topic read failed; retrying", exc_info=True)
                await asyncio.sleep(1)


async def read_status(bootstrap_servers: str, topic: str, security: KafkaSecurity | None = None) -> StatusTable:
    """The whole status topic, once (for `streamer status`)."""
    tp = TopicPartition(topic, 0)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **client_kwargs(security))
    table = StatusTable()
    try:
        await c.start()
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        c.seek(tp, (await c.beginning_offsets([tp]))[tp])
        while end and await c.position(tp) < end:
            for msgs in (await c.getmany(tp, timeout_ms=500)).values():
                for m in msgs:
                    table.apply(m.key, m.value)
    finally:
        await c.stop()
    return table

"""Every worker's copy of the settings table, read with its own consumer.

Why not a Faust Table or GlobalTable: routing needs every setting on every worker (partner
rows govern events of all partitions), and Faust's GlobalTable recovery is known to loop
with more than one instance (faust-streaming issue 283). The table is one compacted
partition; each worker reads it from the start with a group-less consumer, so workers never
rebalance over it, and keeps reading to stay current. Readiness: the worker routes nothing
until it has read up to the end offset it saw at start.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.kafka_client import KafkaSecurity, client_kwargs
from streamer.settings.state import SettingsState

log = logging.getLogger(__name__)


class SettingsView:
    def __init__(self, bootstrap_servers: str, topic: str, security: KafkaSecurity | None = None):
        self.state = SettingsState()
        self.ready = asyncio.Event()
        self.position = 0  # next offset to read
        self.recovered_rows = 0
        self.recovery_seconds: float | None = None
        self.last_fetch: float | None = None  # monotonic time of the last good fetch: broker reachable
        self._bootstrap = bootstrap_servers
        self._security = security  # None: this process's STREAMER_SECURITY_* settings
        self._tp = TopicPartition(topic, 0)
        self._consumer: AIOKafkaConsumer | None = None
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                          enable_auto_commit=False, fetch_max_wait_ms=50,
                                          max_partition_fetch_bytes=8 * 1024 * 1024,
                                          **client_kwargs(self._security))
        await self._consumer.start()
        self._consumer.assign([self._tp])
        # An explicit offset: seek_to_beginning is lazy, and position() right after it
        # reports the end on aiokafka 0.14, which would skip the whole table.
        begin = (await self._consumer.beginning_offsets([self._tp]))[self._tp]
        self._consumer.seek(self._tp, begin)
        self._task = asyncio.create_task(self._run(), name="settings-view")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._consumer:
            await self._consumer.stop()

    async def end_offset(self) -> int:
        return (await self._consumer.end_offsets([self._tp]))[self._tp]

    async def _run(self) -> None:
        started = time.monotonic()
        target = await self.end_offset()
        while True:
            try:
                batches = await self._consumer.getmany(self._tp, timeout_ms=200, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker restart: keep the view, retry
                log.warning("settings table read failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            self.last_fetch = time.monotonic()
            for msg in batches.get(self._tp, ()):
                try:
                    self.state.apply(msg.key, msg.value, msg.offset)
                except Exception:
                    # A row this version cannot read must not stop the view; it is logged
                    # (without its value, which may hold encrypted secrets) and skipped.
                    log.error("unreadable settings row at offset %d key %r", msg.offset, msg.key[:80])
                self.position = msg.offset + 1
                if not self.ready.is_set():
                    self.recovered_rows += 1
            if not self.ready.is_set():
                # Compaction and transaction markers leave gaps: trust the fetch position.
                self.position = max(self.position, await self._consumer.position(self._tp))
                if self.position >= target:
                    self.recovery_seconds = time.monotonic() - started
                    self.ready.set()
                    log.info("settings view ready: %d rows in %.2fs", self.recovered_rows,
                             self.recovery_seconds)
            async with self._advanced:
                self._advanced.notify_all()

    async def wait_for(self, offset: int, timeout: float = 30.0) -> None:
        """Wait until the row at `offset` has been applied."""
        async def reached():
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.position > offset)
        await asyncio.wait_for(reached(), timeout)

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every row the table had when the last fetch answered is applied.

        The high watermark of the view's own last fetch (at most one long poll, 50 ms, old)
        rather than a ListOffsets request: that request queues behind the pending fetch on
        the same connection and cost every settings command about 50 ms. Rows this worker
        writes are waited for explicitly (`wait_for`); rows of the previous owner of the
        commands partition were written before the rebalance that moved it here, which
        takes far longer than one poll."""
        end = self._consumer.highwater(self._tp)
        if end is None:
            end = await self.end_offset()
        if end > 0:
            await self.wait_for(end - 1, timeout)

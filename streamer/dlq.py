"""Dead letters: reading and filtering them (for `streamer dlq` and the replay command)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.kafka_client import KafkaSecurity, client_kwargs


@dataclass
class DeadLetter:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: dict[str, bytes]

    @property
    def dead_at(self) -> datetime:
        return datetime.fromtimestamp(int(self.headers.get("dead", b"0")) / 1000, tz=timezone.utc)

    def summary(self) -> dict[str, Any]:
        h = self.headers
        return {"partition": self.partition, "offset": self.offset, "destination_id": self.key.decode(),
                "workspace_id": h.get("ws", b"").decode(), "event_id": h.get("eid", b"").decode(),
                "kind": h.get("kind", b"").decode(), "type": h.get("type", b"").decode(),
                "attempts": int(h.get("att", b"0")), "dead_at": self.dead_at.isoformat(),
                "error": h.get("err", b"").decode(), "history": orjson.loads(h.get("hist", b"[]")),
                "bytes": len(self.value)}


def matches(d: DeadLetter, workspace_id: str | None = None, destination_id: str | None = None,
            event_ids: list[str] | None = None, since: datetime | None = None, until: datetime | None = None) -> bool:
    h = d.headers
    if workspace_id is not None and h.get("ws", b"").decode() != workspace_id:
        return False
    if destination_id is not None and d.key.decode() != destination_id:
        return False
    if event_ids is not None and h.get("eid", b"").decode() not in event_ids:
        return False
    if since is not None and d.dead_at < since:
        return False
    if until is not None and d.dead_at >= until:
        return False
    return True


async def read_dead_letters(bootstrap: str, topic: str, limit: int = 1_000_000, security: KafkaSecurity | None = None,
                            **filters) -> list[DeadLetter]:
    """Every matching dead letter present when called, in a list (for small reads: the CLI)."""
    return [d async for d in iter_dead_letters(bootstrap, topic, limit, security, **filters)]


async def iter_dead_letters(bootstrap: str, topic: str, limit: int = 1_000_000, security: KafkaSecurity | None = None,
                            **filters) -> AsyncIterator[DeadLetter]:
    """Every matching dead letter present when called (reads each partition to its end),
    one at a time: a replay of a million letters holds one fetch in memory, not all of them."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         max_partition_fetch_bytes=64 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
                         **client_kwargs(security))
    found = 0
    try:
        await c.start()
        parts = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or await _partitions(c, topic))]
        c.assign(parts)
        ends = await c.end_offsets(parts)
        begins = await c.beginning_offsets(parts)
        for tp in parts:
            c.seek(tp, begins[tp])
        todo = {tp for tp in parts if ends[tp] > begins[tp]}
        while todo and found < limit:
            batch = await c.getmany(*todo, timeout_ms=500, max_records=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset >= ends[tp] or found >= limit:
                        continue
                    d = DeadLetter(tp.partition, m.offset, m.key or b"", m.value or b"", dict(m.headers or ()))
                    if matches(d, **filters):
                        found += 1
                        yield d
            for tp in list(todo):
                if await c.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await c.stop()


async def _partitions(c: AIOKafkaConsumer, topic: str) -> set[int]:
    await c._client.force_metadata_update()
    return c._client.cluster.partitions_for_topic(topic) or set()

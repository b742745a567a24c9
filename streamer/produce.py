"""Durable produce: every record is acked by the broker, refused for good, or retried.

An offset may be committed only after what it carries is durably handed on, so a send that
fails for a passing reason (broker restarting, leader moving, connection lost) is sent again
until the broker acks it: a broker outage stalls the pipeline instead of losing data.

Two kinds of failure must *not* be retried like that, because retrying never ends:

* A record the broker refuses for what it is (too large for the topic, corrupt, invalid
  topic name): no retry fixes it. It comes back as `Refused` with the reason, and the caller
  sends something else instead (a rejected copy, a dead letter, cut down if need be).
* A produce request over the broker's `socket.request.max.bytes` (100 MiB by default): the
  broker drops the connection, which looks transient. aiokafka packs every ready batch for
  one broker into one request, with no bound on their sum, so three 38 MB records for three
  partitions make a 114 MB request that fails forever. `ByteBudget` bounds the bytes
  handed to the producer and not yet acked, so no request can carry more than the budget
  (a record larger than the budget is sent alone).

Pure of Faust: the send function is injected, so `tests/test_produce.py` drives it with a
plain aiokafka producer against the real broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from aiokafka import errors as kafka_errors

log = logging.getLogger(__name__)

# (topic, key, value, headers)
Record = tuple[str, bytes | None, bytes | None, list | None]
# Hands one record to the producer; returns the future of its broker ack.
SendFn = Callable[[str, bytes | None, bytes | None, list | None], Awaitable[Awaitable[Any]]]

# Refusals that no retry can fix: the record itself is what the broker will not take.
FINAL_ERRORS = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordTooLargeError,
                kafka_errors.RecordListTooLargeError, kafka_errors.CorruptRecordException,
                kafka_errors.InvalidTopicError, kafka_errors.InvalidTimestampError)

# Well under Kafka's default socket.request.max.bytes (100 MiB), which also bounds the request
# framing, headers and every other partition's batch riding in the same request.
DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
RECORD_OVERHEAD = 128  # bytes a record costs beyond its key, value and headers (framing, batch)


@dataclass(frozen=True, slots=True)
class Refused:
    """The broker will never accept this record."""

    reason: str


def record_size(record: Record) -> int:
    _topic, key, value, headers = record
    size = len(key or b"") + len(value or b"") + RECORD_OVERHEAD
    for name, data in headers or ():
        size += len(name) + len(data or b"")
    return size


def final_reason(exc: BaseException) -> str | None:
    """The reason if `exc` (or what it wraps: Faust wraps aiokafka's errors) is final."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, FINAL_ERRORS):
            return f"broker refused the record: {type(exc).__name__}: {exc}"[:500]
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


CUT_VALUE_BYTES = 64 * 1024
CUT_HEADER_BYTES = 4 * 1024


def cut_down(record: Record, reason: str) -> Record:
    """A copy of a refused record that always fits: its headers (each cut to 4 KiB), the
    first 64 KiB of its value, its original size and why it was cut. For the rejected and
    dead-letter topics, where an operator must see that a record existed and why it failed,
    even when the record itself is what the broker refused."""
    topic, key, value, headers = record
    value = value or b""
    kept = [(name, (data or b"")[:CUT_HEADER_BYTES]) for name, data in headers or ()]
    kept.append(("truncated", str(len(value)).encode()))
    kept.append(("truncated_reason", reason[:1000].encode()))
    return topic, (key or b"")[:1024] or None, value[:CUT_VALUE_BYTES], kept


class ByteBudget:
    """Bytes handed to the producer and not yet acked, shared by everything that produces.

    Every agent produces through the one Faust producer, so the bound must be shared: a
    per-call bound would still let two agents' large records meet in one request.

    Waiters are served first come, first served, so a large record is not starved by small
    ones slipping past it; the common case (nothing waiting, room left) takes no lock and
    makes no task: it runs once per produced record.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    async def acquire(self, size: int) -> int:
        """Wait until `size` bytes fit; returns what was taken (a record over the limit takes
        all of it, so it travels alone)."""
        take = min(size, self.limit)
        if not self._waiters and self.used + take <= self.limit:
            self.used += take
            return take
        entry = (take, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.release(take)  # granted just before the cancellation: give it back
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._grant()  # it may have been first in line, holding up others that fit
            raise
        return take

    def release(self, taken: int) -> None:
        self.used -= taken
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            take, waiter = self._waiters[0]
            if waiter.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.used + take > self.limit:
                return
            self._waiters.popleft()
            self.used += take
            waiter.set_result(None)


class DurableProducer:
    def __init__(self, send: SendFn, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 first_delay_s: float = 0.5, max_delay_s: float = 10.0) -> None:
        self._send = send
        self.budget = ByteBudget(budget_bytes)
        self._first_delay, self._max_delay = first_delay_s, max_delay_s
        self.last_error: BaseException | None = None

    async def send_all(self, records: Sequence[Record]) -> list[Any]:
        """Per record, the broker's metadata or `Refused`. Returns only when each record is one
        of the two: transient failures are retried without end, with backoff."""
        results: list[Any] = [None] * len(records)
        todo = list(range(len(records)))
        delay = self._first_delay
        alone = False  # after a final error, resend one at a time to find the record at fault
        while todo:
            failed: list[int] = []
            refused: list[tuple[int, str]] = []
            if alone:
                for i in todo:
                    out = await self._one(records[i])
                    self._sort(i, out, results, failed, refused)
            else:
                futures = [await self._start(records[i]) for i in todo]
                outcomes = await asyncio.gather(*futures, return_exceptions=True)
                for i, out in zip(todo, outcomes):
                    self._sort(i, out, results, failed, refused)
            if refused and (alone or len(refused) == 1):
                for i, reason in refused:
                    results[i] = Refused(reason)
                    log.error("broker refused a record for %s: %s", records[i][0], reason,
                              extra={"topic": records[i][0]})
            elif refused:
                # A whole partition batch fails together; find which records are at fault.
                failed.extend(i for i, _ in refused)
                alone = True
                todo = sorted(failed)
                continue
            if failed:
                log.warning("%d of %d records not acked by the broker (%s); resending in %.1fs",
                            len(failed), len(todo), _describe(self.last_error), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)
            todo = failed
        return results

    async def send_durably(self, records: Sequence[Record]) -> list[Any]:
        """Like `send_all`, for records that must not be refused (they are small and
        well-formed by construction): a refusal is a bug, raised to the caller."""
        results = await self.send_all(records)
        for r in results:
            if isinstance(r, Refused):
                raise RuntimeError(r.reason)
        return results

    def _sort(self, i: int, out: Any, results: list, failed: list, refused: list) -> None:
        if isinstance(out, BaseException):
            reason = final_reason(out)
            if reason is not None:
                refused.append((i, reason))
            else:
                failed.append(i)
                self.last_error = out
        else:
            results[i] = out

    async def _start(self, record: Record) -> Awaitable[Any]:
        """Hand the record to the producer within the byte budget; the returned awaitable
        resolves to its metadata, or raises the send's error."""
        taken = await self.budget.acquire(record_size(record))
        try:
            fut = await self._send(*record)
        except asyncio.CancelledError:
            self.budget.release(taken)
            raise
        except Exception as e:  # buffer full, producer restarting, record refused on the spot
            self.budget.release(taken)
            return _raise(e)
        # The budget comes back when the broker answers, even if the caller is cancelled
        # before it awaits this: a callback on the ack's future (a task for other awaitables).
        if isinstance(fut, asyncio.Future):
            fut.add_done_callback(lambda f: self._acked(f, taken))
            return fut
        return asyncio.ensure_future(self._released(fut, taken))

    def _acked(self, fut: asyncio.Future, taken: int) -> None:
        self.budget.release(taken)
        if not fut.cancelled():
            fut.exception()  # seen: a caller cancelled meanwhile must not leave it "never retrieved"

    async def _released(self, fut: Awaitable[Any], taken: int) -> Any:
        try:
            return await fut
        finally:
            self.budget.release(taken)

    async def _one(self, record: Record) -> Any:
        try:
            return await (await self._start(record))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return e


def _describe(exc: BaseException | None) -> str:
    causes = []
    while exc is not None and len(causes) < 3:
        causes.append(f"{type(exc).__name__}: {exc}"[:200])
        exc = exc.__cause__
    return " <- ".join(causes)


async def _raise(e: Exception) -> Any:
    raise e

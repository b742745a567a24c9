"""Poison-record isolation: one record that makes processing raise never stops its partition.

Faust acks an event whose handler raised, and retrying a failing batch without end stalls
every tenant on the partition (and the stall survives restarts). So a batch whose handler
raises is tried once more (a passing hiccup), then record by record; a record that still
raises on its own is handed to `on_poison` with the exception as its reason, and the rest
of the batch goes on. `on_poison` writes it where an operator sees it: the rejected topic
for raw records, the dead-letter topic for deliveries.

Handlers must be safe to run again on records they already handled (the agents skip what
is settled, and every output is idempotent at the destination or tolerated as an
at-least-once duplicate). Broker outages never reach this code: durable produce retries
those by itself, so whatever escapes a handler is about the records.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    return f"processing failed: {type(exc).__name__}: {exc}"[:1000]


async def isolated(what: str, batch: Sequence[T], handle: Callable[[Sequence[T]], Awaitable[None]],
                   on_poison: Callable[[T, str], Awaitable[None]], retry_delay_s: float = 1.0) -> int:
    """Run `handle(batch)` so that it completes for every record; returns how many records
    were handed to `on_poison`."""
    last = ""
    for attempt in range(2):
        try:
            await handle(batch)
            return 0
        except asyncio.CancelledError:
            raise
        except Exception as e:
            last = describe(e)
            log.exception("%s failed for a batch of %d (attempt %d); %s", what, len(batch), attempt + 1,
                          "retrying" if attempt == 0 else "isolating the failing records")
            if attempt == 0:
                await asyncio.sleep(retry_delay_s)
    if len(batch) == 1:  # it already failed twice on its own
        await on_poison(batch[0], last)
        return 1
    poisoned = 0
    for record in batch:
        try:
            await handle([record])
        except asyncio.CancelledError:
            raise
        except Exception as e:
            poisoned += 1
            log.error("%s: isolated a record that fails on its own: %s", what, describe(e))
            await on_poison(record, describe(e))
    return poisoned


"""An idempotent aiokafka producer that survives a record the broker refuses.

With idempotence on, the broker de-duplicates a batch that a producer resends after a lost
ack (a leader failover, a dropped connection), so a failover writes nothing twice. Each
batch carries a per-partition sequence number, and the broker takes only the next one.

aiokafka (0.12, still in 0.14) assigns the sequence when it drains a batch and never gives
it back. When the broker refuses a batch for what it holds (MessageSizeTooLarge, a corrupt or
invalid record), the broker never saw that sequence, but the producer has moved past it:
every later batch to that partition is OutOfOrderSequenceNumber, the sender task dies, and
the partition is wedged for good (`tests/test_produce.py` shows the stock producer do it).
streamer meets such refusals by design (a 40 MB event on a topic that takes less), so it
cannot use the stock idempotent producer.

The Java client solves this by winding the partition's sequence back over a failed batch
(`TransactionManager.adjustSequencesDueToFailedBatch`). `IdempotentProducer` does the same:
when a batch fails for good, the next sequence of its partition returns to the batch's first
one. That is exact because aiokafka keeps at most one batch per partition in flight (the
partition is muted until the request ends), so no later batch has taken a sequence yet; the
check below makes sure of it rather than trusting it.

This reaches into aiokafka's accumulator (`_pop_batch`) and transaction manager; both are
pinned in constraints.txt, and the constructor fails loudly if they change shape.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)


class IdempotentProducer(AIOKafkaProducer):
    """`AIOKafkaProducer` with `acks=all` and idempotence, whose partitions outlive a refused batch."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["acks"] = "all"
        kwargs["enable_idempotence"] = True
        super().__init__(**kwargs)
        _wind_back_failed_batches(self._message_accumulator, self._txn_manager)


def _wind_back_failed_batches(accumulator: Any, txn: Any) -> None:
    pop_batch = accumulator._pop_batch
    if txn is None or not callable(pop_batch) or not hasattr(txn, "increment_sequence_number"):
        raise RuntimeError("aiokafka's producer internals changed: review streamer/idempotence.py")

    def _pop_batch(tp: Any) -> Any:
        before = txn.sequence_number(tp)
        batch = pop_batch(tp)
        after = txn.sequence_number(tp)
        if after != before:  # first drain of this batch: it took sequences [before, after)
            _on_final_failure(batch, tp, before, after)
        return batch

    def _on_final_failure(batch: Any, tp: Any, first: int, next_: int) -> None:
        # `failure` is the one place a batch fails for good (refused, expired, producer
        # stopped); retriable errors re-enqueue it with its sequence instead. Wrapping it
        # winds back synchronously, before the sender can drain this partition again.
        failure = batch.failure

        def wound_back_failure(exception: BaseException) -> None:
            failure(exception=exception)
            if txn.sequence_number(tp) == next_:
                txn.increment_sequence_number(tp, first - next_)
            else:  # another batch took sequences after this one: winding back would reuse them
                log.warning("cannot wind back the producer sequence of %s after %r", tp, exception)

        batch.failure = wound_back_failure

    accumulator._pop_batch = _pop_batch

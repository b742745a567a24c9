"""Retry chains read again after a restart: held until caught up, superseded records skipped. Pure."""

from __future__ import annotations

from types import SimpleNamespace

from streamer.retry_schedule import Chains, RetrySchedule


def record(tp: str, offset: int, eid: str = "e1", attempts: int = 1, first: str = "100", key: bytes = b"workspace:7"):
    headers = [("eid", eid.encode()), ("first", first.encode()), ("att", str(attempts).encode())]
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset, key=key, headers=headers))


def test_a_record_whose_chain_moved_on_is_superseded_and_the_latest_is_not():
    chains = Chains(catch_up_max_s=10)
    old, later, other = record("p0", 5, attempts=2), record("p0", 9, attempts=3), record("p0", 10, eid="e2")
    for r in (old, later, other):
        chains.read(r, highwater=11, now=0)
    assert chains.superseded(old)
    assert not chains.superseded(later) and not chains.superseded(other)
    # Another chain of the same event (another first attempt, another destination) is its own.
    assert not chains.superseded(record("p0", 12, attempts=1, first="200"))
    assert not chains.superseded(record("p0", 13, attempts=1, key=b"partner:9"))
    # A record without the headers is never skipped.
    bare = SimpleNamespace(message=SimpleNamespace(tp="p0", offset=14, key=b"k", headers=[]))
    chains.read(bare, highwater=None, now=0)
    assert not chains.superseded(bare)


def test_a_partition_read_again_is_held_until_caught_up_or_for_at_most_the_bound():
    chains = Chains(catch_up_max_s=10)
    first = record("p0", 0)
    chains.read(first, highwater=3, now=0)
    assert chains.held(first, now=1)  # new here, not read to its end
    chains.read(record("p0", 2), highwater=3, now=1)
    assert not chains.held(first, now=1)  # caught up
    chains.read(record("p0", 3), highwater=4, now=2)
    assert not chains.held(first, now=2)  # reading on is not reading again
    chains.read(record("p0", 1), highwater=9, now=3)  # offsets went back: the partition came back
    assert chains.held(first, now=4)
    assert not chains.held(record("p1", 0), now=4)  # other partitions go on
    assert not chains.held(first, now=13.5)  # the bound
    chains.read(record("p2", 0), highwater=None, now=20)
    chains.release()
    assert not chains.held(record("p2", 0), now=20)


def test_held_records_stay_in_the_schedule_and_others_behind_them_go():
    schedule = RetrySchedule(max_bytes=10_000)
    schedule.add("held-a", 1, 10)
    schedule.add("held-b", 2, 10)
    schedule.add("free", 3, 10)
    due, held = schedule.pop_due(now=5, limit=10, keep=lambda item: item.startswith("held"))
    assert due == ["free"] and held and len(schedule) == 2 and schedule.bytes == 20
    due, held = schedule.pop_due(now=5, limit=10)
    assert due == ["held-a", "held-b"] and not held and schedule.bytes == 0

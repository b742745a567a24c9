"""`streamer.gc_tuning`: the worker's collector settings and the time-in-GC metric."""

from __future__ import annotations

import gc

import pytest

from streamer import metrics
from streamer.gc_tuning import _on_gc, track_gc_time, tune_gc


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_zero_leaves_the_collector_alone(restore_gc):
    before = gc.get_threshold(), gc.get_freeze_count()
    tune_gc(0)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_tuning_freezes_the_startup_heap_and_raises_the_young_threshold(restore_gc):
    _, gen1, gen2 = gc.get_threshold()
    tune_gc(50_000)
    assert gc.get_threshold() == (50_000, gen1, gen2)
    assert gc.get_freeze_count() > 10_000  # everything the imports left alive


def test_time_in_each_collection_is_counted():
    track_gc_time()
    track_gc_time()  # idempotent: one callback, not two
    child = metrics.gc_seconds.labels("2")
    before = child._value.get()
    try:
        gc.collect()
        assert child._value.get() > before
        assert gc.callbacks.count(_on_gc) == 1
    finally:
        gc.callbacks.remove(_on_gc)  # not for the rest of this test process

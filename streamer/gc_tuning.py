"""Python's cyclic garbage collector in a long-running stream worker: tuned and measured.

The collector was invisible in cProfile yet cost about a third of the worker's CPU (docs/
performance.md): a batch keeps hundreds of parsed events alive (a job-details event alone
is ~1,200 objects) across many young collections, so they are promoted and set off full
collections, and every full collection walks every object the worker holds (Faust,
aiohttp, pydantic, the settings).
"""

from __future__ import annotations

import gc
import logging
import time

from streamer import metrics

log = logging.getLogger(__name__)
SLOW_COLLECTION_S = 0.1


def tune_gc(gen0_threshold: int) -> None:
    """Freeze what startup left alive and make young collections rarer.

    Called before the settings are read and again once they are recovered. Frozen objects
    are no longer walked by the collector; they are still freed by reference counting when
    dropped (the settings entries hold no reference cycles, so replacing one later frees
    it). Young collections then run every `gen0_threshold` allocations instead of Python's
    700. 0 changes nothing.
    """
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
    log.info("gc tuned: %d objects frozen, gen0 threshold %d", gc.get_freeze_count(), gen0_threshold)


_started: float | None = None


def _on_gc(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    elif _started is not None:
        took = time.perf_counter() - _started
        _started = None
        metrics.gc_seconds.labels(str(info["generation"])).inc(took)
        if took >= SLOW_COLLECTION_S:
            # The whole worker (heartbeats included) stood still for this long.
            log.warning("gc: a generation %d collection took %.0f ms (%d collected)",
                        info["generation"], took * 1000, info["collected"])


def track_gc_time() -> None:
    """Count the time spent in each collection (`streamer_gc_seconds_total`), so a heap that
    grows into expensive collections shows on a dashboard, not only in a benchmark."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)

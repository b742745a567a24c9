"""A fixed CPU workload timed with every benchmark: how fast this machine is right now.

The same commit measured about twice as fast at 19:30 as at 19:05 one day here
(docs/performance.md, Sixth round): the two cores are shared with other tenants. A figure
is only comparable with another taken at a similar reference, so every command records
this one at its start and end. It never changes with the project's code: JSON round trips
(orjson), hashing and plain Python over a ~1 KB document, the kinds of work a worker does.
"""

from __future__ import annotations

import hashlib
import statistics
import time

import orjson

_DOC = {"id": 1234567, "kind": "job", "workspace": {"id": 61001, "name": "acme"},
        "steps": [{"n": i, "name": f"step-{i}", "ok": i % 3 != 0, "out": "x" * 24} for i in range(16)]}


def _unit() -> int:
    raw = orjson.dumps(_DOC)
    doc = orjson.loads(raw)
    total = 0
    for step in doc["steps"]:
        if step["ok"]:
            total += step["n"] + len(step["name"])
    return total + hashlib.sha256(raw).digest()[0]


def reference_us(units: int = 4000, repeats: int = 5) -> float:
    """µs of CPU per unit of the workload, median of `repeats` passes (lower is faster)."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(units):
            _unit()
        times.append((time.process_time() - t0) / units * 1e6)
    return round(statistics.median(times), 2)

"""Liveness: is every agent making progress?

A worker whose agent is stuck (a batch that never finishes, whatever the cause) still
answers HTTP, so a plain `/health` would stay green while its partitions stall. Each agent
records when it starts and finishes a batch; the worker is not live once a batch has been
in flight longer than the stall limit, which a delivery batch never is when all is well
(it is bounded by the delivery deadline and durable produce). Kubernetes' livenessProbe
then restarts the pod, and the alert on restarts fires.
"""

from __future__ import annotations

import itertools
import time


class Progress:
    """One agent's batches in flight, and when it last finished one."""

    _ids = itertools.count()

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight: dict[int, float] = {}
        self.last_done: float | None = None
        self.batches_done = 0

    def begin(self) -> int:
        token = next(self._ids)
        self.in_flight[token] = time.monotonic()
        return token

    def end(self, token: int) -> None:
        self.in_flight.pop(token, None)
        self.last_done = time.monotonic()
        self.batches_done += 1

    def stalled_s(self, now: float | None = None) -> float:
        """How long the oldest batch in flight has been running; 0 when none is."""
        if not self.in_flight:
            return 0.0
        return (now or time.monotonic()) - min(self.in_flight.values())


class Liveness:
    def __init__(self) -> None:
        self.agents: dict[str, Progress] = {}

    def progress(self, name: str) -> Progress:
        return self.agents.setdefault(name, Progress(name))

    def report(self, stall_limit_s: float) -> tuple[bool, dict]:
        now = time.monotonic()
        agents = {name: {"oldest_batch_s": round(p.stalled_s(now), 3), "batches_in_flight": len(p.in_flight),
                         "batches_done": p.batches_done} for name, p in self.agents.items()}
        stalled = [name for name, p in self.agents.items() if p.stalled_s(now) > stall_limit_s]
        return not stalled, {"live": not stalled, "stalled_agents": stalled, "stall_limit_s": stall_limit_s,
                             "agents": agents}

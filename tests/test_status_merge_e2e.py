"""Destination status from two workers, through the real broker: each writes its own row,
and readers merge them instead of one overwriting the other.

A destination's deliveries are keyed by its id, so one worker delivers them at a time; a
destination changes hands when its partition moves (a rollout, a crash, scaling out).
Here worker 1 delivers to both destinations, then stops; worker 2 takes over. Destination
"half" failed on worker 1 (503s) and works on worker 2: merged, it is ok again.
"""

from __future__ import annotations

import json

import orjson

from streamer import topics as T
from tests.providers import Fault
from tests.support import job_event, produce
from tests.test_reliability_e2e import configure
from tests.test_status_e2e import FAST_STATUS, cli, merged_until


async def test_two_workers_rows_for_one_destination_are_merged(env, worker_factory, kafka, prefix, providers):
    providers.faults["half"] = Fault(statuses=[503] * 1000)
    w1 = worker_factory(FAST_STATUS, name="worker1")
    w1.wait_ready()
    await configure(env, providers, {"91": "steady", "92": "half"})

    async def send(ws: int, ids: list[str]) -> None:
        await produce(kafka, prefix + T.JOBS_SUMMARY, [(str(ws).encode(), orjson.dumps(job_event(ws, i))) for i in ids])

    await send(91, ["a1", "a2", "a3"])
    await send(92, ["b1"])
    await merged_until(kafka, prefix, lambda m: m.get("workspace:91") and m["workspace:91"].delivered == 3
                       and m.get("workspace:92") and m["workspace:92"].failed_attempts >= 1, 60, "worker 1's rows")
    w1.stop()

    providers.faults["half"] = Fault(statuses=[])
    w2 = worker_factory(FAST_STATUS, name="worker2")
    w2.wait_ready()
    await send(91, ["a4", "a5"])
    await send(92, ["b2"])
    merged = await merged_until(kafka, prefix, lambda m: m["workspace:91"].delivered == 5
                                and m["workspace:92"].delivered >= 2, 60, "both workers' rows")
    steady, half = merged["workspace:91"], merged["workspace:92"]
    assert (steady.workers, steady.state, steady.failed_attempts) == (2, "ok", 0)
    # Worker 1's failures are kept (summed), but the latest word is worker 2's success.
    assert half.workers == 2 and half.state == "ok" and half.failed_attempts >= 1
    assert half.last_success_ms > half.last_failure_ms and half.last_failure_status == 503

    shown = json.loads((await cli(env, "status", "--workspace", "91", "--json")).stdout)["destinations"]
    assert [(d["destination_id"], d["delivered"], d["workers"]) for d in shown] == [("workspace:91", 5, 2)]

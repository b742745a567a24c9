"""Static group membership (STREAMER_INSTANCE_ID): a restarted worker does not rebalance the others.

Why: every rebalance pauses every worker of the group. With `group.instance.id` set (the
pod name in Kubernetes, stable in the StatefulSet), a worker that stops and comes back
under the same id within the session timeout gets its old partitions back and the other
members keep theirs without rejoining. Each worker counts the assignments it received
(`streamer_group_assignments_total`, one per rebalance it took part in): the test reads it.
"""

from __future__ import annotations

import asyncio

import orjson

from tests.support import WorkerProcess, job_event, produce
from tests.test_reliability_e2e import configure, until

SUMMARY = "audit.jobs.summary.v1"


def joins(worker) -> int:
    from tests.test_reliability_e2e import metric

    return int(metric(worker, "streamer_group_assignments_total"))


async def test_a_worker_restarted_with_its_instance_id_does_not_rebalance_the_other(worker_factory, env, kafka,
                                                                                     prefix, providers, tmp_path):
    # The session timeout must cover a restart (stop + start); 30 s is plenty here.
    extra = {"STREAMER_SESSION_TIMEOUT_S": "30"}
    b = worker_factory({**extra, "STREAMER_INSTANCE_ID": "worker-b"}, name="b")
    b.wait_ready()
    await configure(env, providers, {"1201": "static", "1202": "static"})
    a = worker_factory({**extra, "STREAMER_INSTANCE_ID": "worker-a"}, name="a")
    a.wait_ready()
    # a joining a group of one: b rejoined (the counter sees rebalances).
    await until(lambda: joins(b) >= 2, 60, "b to be rebalanced when a joined")
    await asyncio.sleep(3)  # let the group settle into its generation
    settled = joins(b)

    assert a.stop() == 0
    # The same pod comes back: same instance id and same web address (Faust's assignor keeps
    # the member's URL in the assignment the broker hands back to a static member).
    a2 = WorkerProcess({**env, **extra, "STREAMER_INSTANCE_ID": "worker-a"}, tmp_path / "a-again")
    a2.port = a.port
    a2.env["STREAMER_WEB_PORT"] = str(a.port)
    a2.start()
    try:
        a2.wait_ready()
        events = [(ws.encode(), orjson.dumps(job_event(ws, f"s{ws}-{i}"))) for i in range(200) for ws in ("1201", "1202")]
        await produce(kafka, prefix + SUMMARY, events)
        await until(lambda: len(set(providers.ids("static"))) >= 400, 90, "every event after the restart")
        assert joins(b) == settled, "b was rebalanced: the restart of a disturbed the group"
        assert joins(a2) >= 1, "a got its partitions back"
    finally:
        a2.stop()

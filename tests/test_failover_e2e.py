"""Broker failover on a 3-node KRaft cluster: replicated topics, acks=all, idempotent producers.

Slow (three JVMs and two broker restarts): run by `scripts/dev.sh test-long`. The leader of
a raw partition is killed with SIGKILL mid-run, brought back, and once every partition is
fully in sync again the leader of a delivery partition is killed too. Topics have
replication factor 3 and min.insync.replicas 2 (what `streamer topics apply
--replication-factor 3` sets), so every acknowledged write is on two brokers and no event
may be lost; the test prints the figures the README quotes.
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streamer.dev.local import KafkaCluster, free_port
from streamer.topics_admin import apply_topics
from tests.support import WorkerProcess, accepted, admin_for, http_config, job_event, worker_env

SUMMARY, HTTP = "audit.jobs.summary.v1", "audit.deliveries.http.v1"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ.setdefault("STREAMER_KAFKA_HEAP", "512m")  # three JVMs on a small machine
    c = KafkaCluster(tmp_path_factory.mktemp("cluster"), ports=[free_port() for _ in range(3)])
    c.start()
    try:
        yield c
    finally:
        c.stop()


async def leaders(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """{partition: (leader node id, in-sync replicas)}"""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (info,) = await admin.describe_topics([topic])
        return {p["partition"]: (p["leader"], len(p["isr"])) for p in info["partitions"]}
    finally:
        await admin.close()


async def in_sync(bootstrap: str, topics: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = [await leaders(bootstrap, t) for t in topics]
        if all(isr == 3 for s in states for _, isr in s.values()):
            return
        assert time.monotonic() < deadline, f"replicas did not catch up: {states}"
        await asyncio.sleep(0.5)


async def test_killing_the_leaders_of_a_raw_and_a_delivery_partition_loses_nothing(cluster, s3, providers, tmp_path):
    prefix = "failover."
    report = await apply_topics(cluster.bootstrap, prefix, replication_factor=3, min_insync_replicas=2)
    assert report.ok, report.drift
    again = await apply_topics(cluster.bootstrap, prefix, replication_factor=3, min_insync_replicas=2)
    assert again.ok and not again.created and not again.drift  # no drift on a 3-broker cluster

    env = worker_env(cluster.bootstrap, s3, prefix, tmp_path)
    env["STREAMER_SESSION_TIMEOUT_S"] = "6"
    worker = WorkerProcess(env, tmp_path / "worker")
    worker.start()
    workspaces = [str(900 + i) for i in range(12)]
    try:
        worker.wait_ready(90)
        async with admin_for(env) as admin:
            for ws in workspaces:
                await accepted(admin, "register_workspace", workspace_id=ws, partner_id="fo", role="customer")
            await accepted(admin, "put_partner_config", partner_id="fo",
                           config=http_config(providers, "generic", "failover"))

        # The upstream producer as the spec expects one: acks=all, idempotent, retrying.
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=5, request_timeout_ms=30000)
        await producer.start()
        ids: list[str] = []
        events = []
        batches, per_batch = 40, 250
        try:
            for b in range(batches):
                futs = []
                for i in range(per_batch):
                    eid = f"f{b}-{i}"
                    ws = workspaces[(b * per_batch + i) % len(workspaces)]
                    ids.append(eid)
                    futs.append(await producer.send(prefix + SUMMARY, orjson.dumps(job_event(ws, eid)),
                                                    key=ws.encode()))
                await asyncio.gather(*futs)
                if b == 10:
                    node = (await leaders(cluster.bootstrap, prefix + SUMMARY))[0][0]
                    cluster.node(node).kill()
                    events.append(f"killed node {node}, leader of {SUMMARY}[0], after {len(ids)} events")
                if b == 16:
                    await asyncio.to_thread(cluster.node(node).start)
                    await in_sync(cluster.bootstrap, [prefix + SUMMARY, prefix + HTTP])
                    events.append(f"node {node} back and in sync after {len(ids)} events")
                if b == 22:
                    node = (await leaders(cluster.bootstrap, prefix + HTTP))[0][0]
                    cluster.node(node).kill()
                    events.append(f"killed node {node}, leader of {HTTP}[0], after {len(ids)} events")
                if b == 28:
                    await asyncio.to_thread(cluster.node(node).start)
                    events.append(f"node {node} restarted after {len(ids)} events")
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()

        deadline = time.monotonic() + 300
        while not set(providers.ids("failover")) >= set(ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        got = providers.ids("failover")
        lost = set(ids) - set(got)
        print(f"\nfailover, 3 brokers, RF 3, min ISR 2: {'; '.join(events)}")
        print(f"sent {len(ids)}, delivered {len(set(got))}, duplicates {len(got) - len(set(got))}, lost {len(lost)}")
        assert not lost, sorted(lost)[:20]
        assert worker.proc.poll() is None, "the worker must ride through a broker failover"
    finally:
        assert worker.stop() is not None

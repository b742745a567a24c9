"""The delivery guarantees under hostile timing, through the real broker and real workers.

* Ordered commits: a later batch that finishes first never commits past an event still in
  flight (Faust would: faust-streaming issue 606), so kill -9 at that moment loses nothing.
* Retry isolation: one destination's `Retry-After: 86400` or endless failure never holds up
  another destination's due retries on the same retry partition.
* Memory bounded by bytes: a run of 38 MB events for several destinations on several
  partitions is delivered, with peak RSS under the 1 GiB pod limit.

Timing is never asserted: waits have generous limits and only say what did not happen.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka.partitioner import DefaultPartitioner

from streamer import topics as T
from tests.providers import Fault
from tests.support import accepted, admin_for, consume, http_config, job_event, produce, uid

SUMMARY, DETAILS = T.JOBS_SUMMARY, T.JOBS_DETAILS


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def configure(env, providers, workspaces: dict[str, str], **config) -> None:
    async with admin_for(env) as admin:
        for ws, name in workspaces.items():
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws,
                           config=http_config(providers, "generic", name, **config))


def peak_rss_mb(worker) -> float:
    """The worker process's high-water resident set (VmHWM), in MiB."""
    for line in open(f"/proc/{worker.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_kill_9_while_a_later_batch_finished_first_loses_nothing(env, worker_factory, kafka, prefix, providers):
    """The first event's request hangs; the next 20 events of the same destination (so the
    same delivery partition) are taken as a second batch and delivered; Faust commits;
    then the worker is killed. Before ordered acks, the commit had passed the first event:
    it was never delivered."""
    name = f"hang-first-{uid()}"
    slow = {"STREAMER_DELIVERY_DEADLINE_S": "120", "STREAMER_HTTP_TIMEOUT_S": "120"}
    worker = worker_factory(slow)
    worker.wait_ready()
    await configure(env, providers, {"61": name})
    providers.faults[name] = Fault(hang_s=300)
    await produce(kafka, prefix + SUMMARY, [(b"61", orjson.dumps(job_event(61, "first")))])
    await until(lambda: providers.requests[name] >= 1, 60, "the first request to hang")
    providers.faults[name] = Fault()  # later requests answer at once; the first still hangs
    later = [f"later-{i}" for i in range(20)]
    await produce(kafka, prefix + SUMMARY, [(b"61", orjson.dumps(job_event(61, e))) for e in later])
    await until(lambda: set(providers.ids(name)) >= set(later), 60, "the later batch")
    await asyncio.sleep(4)  # Faust commits every second: let it try to commit past "first"
    worker.kill9()
    worker_factory(slow, name="after").wait_ready()
    await until(lambda: "first" in providers.ids(name), 90, "the first event after the restart")
    assert set(providers.ids(name)) == {"first", *later}


def same_partition(candidates: list[str], count: int, partitions: int) -> list[str]:
    """`count` workspaces whose destination ids (`workspace:<id>`, the retry record key)
    land on the same retry partition, as the producer's default partitioner places them."""
    part = DefaultPartitioner()
    by: dict[int, list[str]] = {}
    for ws in candidates:
        p = part(f"workspace:{ws}".encode(), list(range(partitions)), list(range(partitions)))
        by.setdefault(p, []).append(ws)
        if len(by[p]) == count:
            return by[p]
    raise AssertionError("no partition with enough workspaces")


async def test_one_destinations_retry_schedule_never_holds_up_anothers(env, worker_factory, kafka, prefix, providers):
    """On one retry partition: a destination answering 429 with `Retry-After: 86400`, one
    failing for the whole run, and four that fail three times then recover. The recovering
    ones' deliveries arrive; the 86400 s one is retried within the maximum backoff; the dead
    one reaches the dead-letter topic when the short horizon passes. Before, the retry agent
    held its batch until every record in it was due (here: a day)."""
    wss = same_partition([str(7000 + i) for i in range(200)], 6, T.BY_NAME[T.DELIVERIES_RETRY].partitions)
    tag = uid()
    names = {ws: f"iso-{tag}-{i}" for i, ws in enumerate(wss)}
    retry_after, dead, *recovering = wss
    providers.faults[names[retry_after]] = Fault(statuses=[429] * 2, retry_after="86400")
    providers.faults[names[dead]] = Fault(statuses=[503] * 100_000)
    for ws in recovering:
        providers.faults[names[ws]] = Fault(statuses=[503] * 3)
    worker_factory({"STREAMER_RETRY_BASE_S": "0.05", "STREAMER_RETRY_MAX_BACKOFF_S": "3", "STREAMER_INLINE_RETRIES": "0",
                    "STREAMER_BREAKER_FAILURES": "100", "STREAMER_RETRY_HORIZON_S": "20"}).wait_ready()
    await configure(env, providers, names)
    await produce(kafka, prefix + SUMMARY, [(ws.encode(), orjson.dumps(job_event(int(ws), f"e-{ws}"))) for ws in wss])
    for ws in recovering + [retry_after]:
        await until(lambda ws=ws: providers.ids(names[ws]) == [f"e-{ws}"], 90, f"delivery to {names[ws]}")
    letters = await consume(kafka, prefix + T.DEAD_LETTERS, 1, timeout=90)
    assert [dict(m.headers)["eid"] for m in letters] == [f"e-{dead}".encode()]
    assert b"retry horizon" in dict(letters[0].headers)["err"]


async def test_a_run_of_38_mb_events_is_delivered_within_the_memory_limit(env, worker_factory, kafka, prefix,
                                                                          providers):
    """Six 38 MB job-details events (under the 40 MB rule) for six destinations on several
    partitions, produced at once. Before the produce requests were bounded, the producer
    packed several into one request over the broker's 100 MiB limit and retried it for ever."""
    worker = worker_factory()
    worker.wait_ready()
    tag = uid()
    wss = [str(8100 + i) for i in range(6)]
    await configure(env, providers, {ws: f"big-{tag}-{ws}" for ws in wss}, jobs="details")
    step = lambda n: {"recipe_line_number": n, "adapter_name": "http", "input": {"blob": "x" * 1_000_000}}
    records = []
    for ws in wss:
        body = orjson.dumps(job_event(int(ws), f"big-{ws}", lines=[step(n) for n in range(38)]))
        assert 38_000_000 < len(body) < 40 * 1024 * 1024
        records.append((ws.encode(), body))
    for record in records:  # one at a time: the test's own producer has no byte bound
        await produce(kafka, prefix + DETAILS, [record])
    for ws in wss:
        got = await providers.wait_items(f"big-{tag}-{ws}", 1, timeout=180)
        assert [m["id"] for m in got] == [f"big-{ws}"] and len(got[0]["lines"]) == 38
    rss = peak_rss_mb(worker)
    print(f"\n6 x 38 MB events, 6 destinations: peak worker RSS {rss:.0f} MiB")
    assert rss < 1024, rss


async def test_a_stalled_agent_makes_the_worker_not_live(env, worker_factory, kafka, prefix, providers):
    """/health (the livenessProbe) turns 503 and names the agent once a batch has been in
    flight longer than the stall limit, and turns 200 again when it moves."""
    name = f"stall-{uid()}"
    worker = worker_factory({"STREAMER_LIVENESS_STALL_S": "2", "STREAMER_DELIVERY_DEADLINE_S": "60",
                             "STREAMER_HTTP_TIMEOUT_S": "60"})
    worker.wait_ready()
    assert worker.get("/health")[0] == 200
    await configure(env, providers, {"62": name})
    providers.faults[name] = Fault(hang_s=8)
    await produce(kafka, prefix + SUMMARY, [(b"62", orjson.dumps(job_event(62, "stuck")))])
    await until(lambda: worker.get("/health")[0] == 503, 30, "not live while the batch hangs")
    body = orjson.loads(worker.get("/health")[1])
    assert body["stalled_agents"] == ["deliver_http"] and body["status"] == "stalled"
    await until(lambda: worker.get("/health")[0] == 200, 60, "live again once it moved")
    assert providers.ids(name) == ["stuck"]

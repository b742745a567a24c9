"""Delivery guarantees under failure: retry topic, dead letters and replay, isolation, crashes.

Figures (sent, delivered, duplicates, lost) are printed with -s; the README quotes them.
Timing is measured and printed, never asserted: the machine has 2 shared cores.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

import orjson
import pytest

from streamer import topics as T
from streamer.dev.local import Kafka, free_port
from streamer.topics_admin import apply_topics
from tests.providers import Fault, ProviderServer
from tests.support import WorkerProcess, accepted, admin_for, consume, http_config, job_event, produce, worker_env

SUMMARY = T.JOBS_SUMMARY
FAST_RETRY = {"STREAMER_RETRY_BASE_S": "0.05", "STREAMER_RETRY_MAX_BACKOFF_S": "1", "STREAMER_INLINE_RETRIES": "1"}


def metric(worker, name: str, **labels) -> float:
    """Sum of a Prometheus sample over the series whose labels include `labels`."""
    _, text = worker.get("/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


async def configure(env, providers, workspaces: dict[str, str], provider: str = "generic") -> None:
    async with admin_for(env) as admin:
        for ws, name in workspaces.items():
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws,
                           config=http_config(providers, provider, name))


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_retry_topic_dead_letters_and_replay(env, worker_factory, kafka, prefix, providers):
    providers.faults["outage"] = Fault(statuses=[503] * 6)
    providers.faults["down"] = Fault(statuses=[503] * 10_000)
    w = worker_factory({**FAST_RETRY, "STREAMER_RETRY_HORIZON_S": "8", "STREAMER_BREAKER_RESET_S": "0.5"})
    w.wait_ready()
    await configure(env, providers, {"41": "outage", "42": "down"})
    await produce(kafka, prefix + SUMMARY, [(b"41", orjson.dumps(job_event(41, "j-outage"))),
                                            (b"42", orjson.dumps(job_event(42, "j-down")))])
    # The outage outlasts the in-line retries: parked, then re-delivered from the retry topic.
    await until(lambda: providers.ids("outage") == ["j-outage"], 60, "re-delivery after the outage")
    assert providers.requests["outage"] == 7
    # Past the 8 s horizon the other one is dead-lettered, with its attempt history.
    dead = await consume(kafka, prefix + T.DEAD_LETTERS, 1, timeout=60)
    assert len(dead) == 1
    h = dict(dead[0].headers)
    assert h["eid"] == b"j-down" and b"retry horizon" in h["err"]
    assert int(h["att"]) >= 3 and len(orjson.loads(h["hist"])) >= 2
    assert metric(w, "streamer_deliveries_total", outcome="parked") >= 2
    assert metric(w, "streamer_deliveries_total", outcome="dead_lettered") == 1
    assert metric(w, "streamer_deliveries_total", outcome="delivered") == 1
    assert metric(w, "streamer_delivery_attempts_total", result="retryable") >= 9
    assert metric(w, "streamer_delivery_latency_seconds_count") == 1

    # The admin lists it, fixes the destination, and replays it (a signed command).
    cli_env = {**os.environ, **env}
    listed = subprocess.run([sys.executable, "-m", "streamer", "dlq", "list", "--workspace", "42"],
                            capture_output=True, text=True, env=cli_env)
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [r["event_id"] for r in rows] == ["j-down"] and rows[0]["attempts"] >= 3, listed.stderr
    async with admin_for(env) as admin:
        await accepted(admin, "put_workspace_config", workspace_id="42", config=http_config(providers, "generic", "fixed"))
    replay = subprocess.run([sys.executable, "-m", "streamer", "dlq", "replay", "--workspace", "42"],
                            capture_output=True, text=True, env=cli_env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert orjson.loads(replay.stdout)["replayed"] == 1
    await until(lambda: providers.ids("fixed") == ["j-down"], 30, "the replayed delivery")
    unsigned = subprocess.run([sys.executable, "-m", "streamer", "dlq", "replay", "--workspace", "42"],
                              capture_output=True, text=True, env={**cli_env, "STREAMER_SIGNING_KEYS": "test-k1:"
                                                                   + "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgISE="})
    assert unsigned.returncode == 1 and "signature does not match" in unsigned.stdout


async def test_one_failing_and_one_hanging_destination_do_not_hold_up_20_healthy_ones(env, worker_factory, kafka,
                                                                                     prefix, providers):
    providers.faults["bad"] = Fault(statuses=[503] * 100_000)
    providers.faults["hang"] = Fault(hang_s=3600)
    healthy = {f"{500 + i}": f"ok-{i}" for i in range(20)}
    w = worker_factory({**FAST_RETRY, "STREAMER_DELIVERY_DEADLINE_S": "1", "STREAMER_HTTP_TIMEOUT_S": "1", "STREAMER_BREAKER_FAILURES": "2",
                        "STREAMER_BREAKER_RESET_S": "2", "STREAMER_BATCH_LINGER_S": "0.05"})
    w.wait_ready()
    await configure(env, providers, {**healthy, "598": "bad", "599": "hang"})
    sent_at: dict[str, float] = {}
    for rnd in range(15):
        batch = []
        for ws in [*healthy, "598", "599"]:
            eid = f"{ws}-{rnd}"
            sent_at[eid] = time.time()
            batch.append((ws.encode(), orjson.dumps(job_event(ws, eid))))
        await produce(kafka, prefix + SUMMARY, batch)
        await asyncio.sleep(0.2)
    await until(lambda: sum(len(providers.ids(n)) for n in healthy.values()) >= 300, 60, "healthy deliveries")
    # All healthy deliveries arrived while the hanging destination was still hanging.
    assert providers.faults["hang"].hang_s == 3600 and providers.ids("hang") == []
    delays = sorted(max(0.0, arrived - sent_at[eid]) for eid, arrived in _arrival_times(providers).items()
                    if eid.split("-")[0] in healthy)
    print(f"\nhealthy deliveries: {len(delays)}, delay p50 {delays[len(delays) // 2]:.2f}s, "
          f"max {delays[-1]:.2f}s (one failing, one hanging destination among them)")
    assert metric(w, "streamer_deliveries_total", outcome="parked") > 0
    # Recovery: every event of the failing destinations arrives.
    providers.faults["bad"].statuses.clear()
    providers.faults["hang"].hang_s = 0
    await until(lambda: len(set(providers.ids("bad"))) == 15 and len(set(providers.ids("hang"))) == 15, 90,
                "the failing destinations' events after recovery")


def _arrival_times(providers: ProviderServer) -> dict[str, float]:
    first: dict[str, float] = {}
    for at, item in providers.arrivals:
        first.setdefault(item["id"], at)
    return first


async def _crash_run(env, worker_factory, kafka, prefix, providers, events: int, kills: int, seed: int,
                     poison_every: int = 0, failing: bool = False, gap: tuple[float, float] = (1.0, 4.0)) -> None:
    """Two workers, `kills` kill -9 of a random one while `events` events stream in.

    With `poison_every`, every n-th record is hostile (not JSON, or a time out of range) and
    must reach the rejected topic; with `failing`, one more workspace's destination answers
    503 for the whole run and its events must reach the dead-letter topic (a short horizon).
    Every event is accounted for: delivered, rejected or dead-lettered; lost is computed.
    """
    rng = random.Random(seed)
    workspaces = [f"{700 + i}" for i in range(8)]
    extra = {"STREAMER_SESSION_TIMEOUT_S": "6"}
    if failing:
        extra.update({**FAST_RETRY, "STREAMER_RETRY_HORIZON_S": "20", "STREAMER_BREAKER_RESET_S": "1"})
        providers.faults["soak-down"] = Fault(statuses=[503] * 10_000_000)
    workers = [worker_factory(extra, name="a"), worker_factory(extra, name="b")]
    for w in workers:
        w.wait_ready()
    await configure(env, providers, {ws: "crash" for ws in workspaces}, provider="datadog")
    if failing:
        await configure(env, providers, {"799": "soak-down"})
    ids = [f"e{i}" for i in range(events)]
    records, poison, doomed = [], [], []
    for i, eid in enumerate(ids):
        ws = rng.choice(workspaces)
        records.append((ws.encode(), orjson.dumps(job_event(ws, eid))))
        if poison_every and i % poison_every == 0:
            bad = (b"not json " + eid.encode() if i % 2 else
                   orjson.dumps(job_event(ws, "p" + eid, started_at="0001-01-01T00:00:00+01:00", completed_at=None)))
            records.append((ws.encode(), bad))
            poison.append(bad)
        if failing and i % 200 == 0:
            records.append((b"799", orjson.dumps(job_event(799, "d" + eid))))
            doomed.append("d" + eid)

    async def feed():
        for i in range(0, len(records), 500):
            await produce(kafka, prefix + SUMMARY, records[i:i + 500])
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(feed())
    for k in range(kills):
        await asyncio.sleep(rng.uniform(*gap))
        victim = rng.randrange(len(workers))
        workers[victim].kill9()
        workers[victim] = worker_factory(extra, name=f"restart{k}")
        workers[victim].wait_ready()
    await feeder
    await until(lambda: set(providers.ids("crash")) >= set(ids), 300, "every event after the kills")
    got = providers.ids("crash")
    dupes = len(got) - len(set(got))
    lost = len(set(ids) - set(got))
    summary = f"kill -9 x{kills} with 2 workers: sent {events}, delivered {len(set(got))}, duplicates {dupes}"
    if poison:
        # Duplicates are allowed on these topics too: read until every distinct one is there.
        rejected = await consume(kafka, prefix + T.REJECTED, 10 ** 9, timeout=60,
                                 stop=lambda got: set(poison) <= {m.value for m in got})
        missing = set(poison) - {m.value for m in rejected}
        lost += len(missing)
        summary += f"; poison {len(poison)}, rejected {len(poison) - len(missing)}"
    if doomed:
        eids = lambda got: {dict(m.headers)["eid"].decode() for m in got}  # noqa: E731
        letters = await consume(kafka, prefix + T.DEAD_LETTERS, 10 ** 9, timeout=180,
                                stop=lambda got: set(doomed) <= eids(got))
        missing = set(doomed) - eids(letters)
        lost += len(missing)
        summary += (f"; to the failing destination {len(doomed)}, dead-lettered {len(doomed) - len(missing)} "
                    f"({len(letters)} dead letters)")
    print(f"\n{summary}; lost {lost}")
    assert lost == 0


async def test_kill_9_during_a_run_loses_nothing(env, worker_factory, kafka, prefix, providers):
    await _crash_run(env, worker_factory, kafka, prefix, providers, events=4000, kills=2, seed=1)


@pytest.mark.slow
async def test_kill_9_five_times_during_20000_events(env, worker_factory, kafka, prefix, providers):
    await _crash_run(env, worker_factory, kafka, prefix, providers, events=20_000, kills=5, seed=2)


@pytest.mark.slow
async def test_soak_50_kill_9_with_poison_and_a_failing_destination(env, worker_factory, kafka, prefix, providers):
    await _crash_run(env, worker_factory, kafka, prefix, providers, events=50_000, kills=50, seed=3,
                     poison_every=250, failing=True, gap=(0.5, 2.0))


async def test_broker_restart_mid_run_loses_nothing(s3, providers, tmp_path):
    broker = Kafka(tmp_path / "own-kafka", free_port())
    await asyncio.to_thread(broker.start)  # its readiness probe runs its own event loop
    try:
        prefix = "restart."
        assert (await apply_topics(broker.bootstrap, prefix)).ok
        env = worker_env(broker.bootstrap, s3, prefix, tmp_path)
        w = WorkerProcess(env, tmp_path / "worker")
        w.start()
        try:
            w.wait_ready()
            await configure(env, providers, {"801": "restart"})
            first = [(b"801", orjson.dumps(job_event(801, f"a{i}"))) for i in range(1000)]
            await produce(broker.bootstrap, prefix + SUMMARY, first)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(3)
            await asyncio.to_thread(broker.start)
            second = [(b"801", orjson.dumps(job_event(801, f"b{i}"))) for i in range(1000)]
            await produce(broker.bootstrap, prefix + SUMMARY, second)
            want = {f"a{i}" for i in range(1000)} | {f"b{i}" for i in range(1000)}
            await until(lambda: set(providers.ids("restart")) >= want, 180, "every event across the restart")
            got = providers.ids("restart")
            lost = len(want - set(got))
            print(f"\nbroker restart: sent 2000, delivered {len(set(got))}, duplicates {len(got) - len(set(got))}, "
                  f"lost {lost}")
            assert lost == 0
            assert w.proc.poll() is None, "the worker must survive a broker restart"
        finally:
            w.stop()
    finally:
        broker.stop()


async def test_destination_down_for_the_whole_run_then_up(env, worker_factory, kafka, prefix):
    port = free_port()
    late = ProviderServer()
    late.port = port  # its URL is known before it listens
    worker_factory(FAST_RETRY).wait_ready()
    await configure(env, late, {"901": "late"})
    ids = [f"d{i}" for i in range(300)]
    await produce(kafka, prefix + SUMMARY, [(b"901", orjson.dumps(job_event(901, i))) for i in ids])
    parked = await consume(kafka, prefix + T.DELIVERIES_RETRY, 300, timeout=60)
    assert len(parked) >= 300  # nothing listens: every delivery was parked, none dropped
    await late.start(port)
    try:
        await until(lambda: set(late.ids("late")) == set(ids), 90, "every event once the destination is up")
        got = late.ids("late")
        print(f"\ndestination down then up: sent 300, delivered {len(set(got))}, duplicates {len(got) - len(set(got))}")
    finally:
        await late.stop()


async def test_settings_change_mid_run(env, worker_factory, kafka, prefix, providers):
    worker_factory().wait_ready()
    await configure(env, providers, {"950": "before"})
    sent_after_result: list[str] = []
    all_ids: list[str] = []
    switched = asyncio.Event()

    async def feed():
        for i in range(40):
            batch = [f"m{i}-{j}" for j in range(50)]
            tag_after = switched.is_set()
            await produce(kafka, prefix + SUMMARY, [(b"950", orjson.dumps(job_event(950, e))) for e in batch])
            all_ids.extend(batch)
            if tag_after:
                sent_after_result.extend(batch)
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(feed())
    await asyncio.sleep(0.8)
    async with admin_for(env) as admin:
        await accepted(admin, "put_workspace_config", workspace_id="950",
                       config=http_config(providers, "generic", "after"))
    switched.set()
    await feeder
    await until(lambda: len(set(providers.ids("before")) | set(providers.ids("after"))) >= len(all_ids), 60,
                "every event before and after the change")
    assert sent_after_result, "the change must land mid-run"
    assert set(sent_after_result) <= set(providers.ids("after"))
    assert not set(sent_after_result) & set(providers.ids("before"))
    assert set(providers.ids("before")) | set(providers.ids("after")) == set(all_ids)


async def test_sigterm_stops_within_the_grace_period_and_loses_nothing(env, worker_factory, kafka, prefix, providers):
    # One batch of 400 takes ~20 s at this destination, so SIGTERM lands mid-batch; the long
    # deadline keeps the engine from parking it first. Acking that batch on the way out would lose it.
    providers.faults["slow"] = Fault(hang_s=0.2)
    w = worker_factory({**FAST_RETRY, "STREAMER_SHUTDOWN_GRACE_S": "15", "STREAMER_DELIVERY_DEADLINE_S": "120",
                        "STREAMER_HTTP_TIMEOUT_S": "120"})
    w.wait_ready()
    await configure(env, providers, {"960": "slow"})
    ids = [f"s{i}" for i in range(400)]
    await produce(kafka, prefix + SUMMARY, [(b"960", orjson.dumps(job_event(960, i))) for i in ids])
    await until(lambda: len(providers.ids("slow")) > 0, 30, "the first deliveries")
    w.proc.send_signal(__import__("signal").SIGTERM)
    code = w.proc.wait(timeout=30)
    assert code == 0, w.log()[-3000:]
    worker_factory(FAST_RETRY, name="after-term").wait_ready()
    providers.faults["slow"].hang_s = 0
    await until(lambda: set(providers.ids("slow")) == set(ids), 60, "every event after the restart")


async def test_parked_deliveries_read_again_after_kill_9_do_not_fork(env, worker_factory, kafka, prefix, providers):
    """A worker killed while its retry partition holds records it has already re-parked (the
    commit waits behind records not yet due) reads them again after the restart. Each must
    not start a second retry chain: once the destination is up, every event arrives once."""
    providers.faults["fork"] = Fault(statuses=[503] * 10_000_000)
    extra = {**FAST_RETRY, "STREAMER_RETRY_MAX_BACKOFF_S": "3", "STREAMER_BREAKER_RESET_S": "0.5",
             "STREAMER_SESSION_TIMEOUT_S": "6"}
    worker = worker_factory(extra, name="first")
    worker.wait_ready()
    await configure(env, providers, {"611": "fork"})
    ids = [f"f{i}" for i in range(40)]
    await produce(kafka, prefix + SUMMARY, [(b"611", orjson.dumps(job_event(611, i))) for i in ids])
    for k in range(3):
        await asyncio.sleep(6)  # a few retry rounds; the retry partition's commit lags behind them
        worker.kill9()
        worker = worker_factory(extra, name=f"again{k}")
        worker.wait_ready()
    providers.faults["fork"] = Fault()
    await until(lambda: set(providers.ids("fork")) >= set(ids), 90, "every event once the destination is up")
    await asyncio.sleep(8)  # a second chain of an event would arrive within the maximum backoff
    got = providers.ids("fork")
    print(f"\nkill -9 during retries: {len(set(got))} events, {len(got) - len(set(got))} duplicates")
    assert len(got) == len(set(got))

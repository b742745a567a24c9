"""Destination status and notifications through a real broker and a real worker: a destination
that works, one that answers 401, and one that is down and then recovers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import orjson

from streamer import topics as T
from streamer.status_io import read_status
from tests.providers import Fault
from tests.support import consume, job_event, produce
from tests.test_reliability_e2e import FAST_RETRY, configure, metric, until

FAST_STATUS = {**FAST_RETRY, "STREAMER_STATUS_INTERVAL_S": "0.3", "STREAMER_STATUS_COUNTERS_INTERVAL_S": "0.3", "STREAMER_NOTIFY_MIN_INTERVAL_S": "0.5",
               "STREAMER_BREAKER_FAILURES": "2", "STREAMER_BREAKER_RESET_S": "1"}


async def merged_until(kafka, prefix, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        merged = (await read_status(kafka, prefix + T.DESTINATION_STATUS)).merged()
        if predicate(merged):
            return merged
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {merged}"
        await asyncio.sleep(0.5)


async def cli(env, *args) -> subprocess.CompletedProcess:
    """In a thread: the test's provider servers run on this event loop and must keep answering."""
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "streamer", *args], capture_output=True,
                                   text=True, env=env, timeout=60)


async def test_status_and_notifications_of_working_unauthorized_and_recovering_destinations(
        env, worker_factory, kafka, prefix, providers):
    providers.faults["auth"] = Fault(statuses=[401] * 1000)
    providers.faults["flaky"] = Fault(statuses=[503] * 12)
    w = worker_factory(FAST_STATUS)
    w.wait_ready()
    await configure(env, providers, {"71": "works", "72": "auth", "73": "flaky"})
    await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"71", orjson.dumps(job_event(71, "ok-1"))),
                                                   (b"72", orjson.dumps(job_event(72, "auth-1"))),
                                                   (b"73", orjson.dumps(job_event(73, "flaky-1")))])

    def settled(m) -> bool:
        return (m.get("workspace:71") and m["workspace:71"].delivered == 1
                and m.get("workspace:72") and m["workspace:72"].dead_lettered == 1
                and m.get("workspace:73") and m["workspace:73"].delivered == 1)

    merged = await merged_until(kafka, prefix, settled, 90, "every destination's outcome")
    ok, auth, flaky = merged["workspace:71"], merged["workspace:72"], merged["workspace:73"]
    assert (ok.state, ok.failed_attempts, ok.last_failure_ms) == ("ok", 0, None)
    assert (auth.state, auth.last_failure_status, auth.delivered) == ("failing", 401, 0)
    assert auth.last_failure_reason.startswith("HTTP 401") and auth.failing_since_ms
    assert flaky.state == "ok" and flaky.parked >= 1 and flaky.failed_attempts >= 2
    assert flaky.last_failure_status == 503 and flaky.consecutive_failures == 0

    # The admin's view: one workspace, and the failing ones.
    shown = json.loads((await cli(env, "status", "--workspace", "72", "--json")).stdout)["destinations"]
    assert [(d["destination_id"], d["state"], d["last_failure_status"]) for d in shown] == [
        ("workspace:72", "failing", 401)]
    failing = await cli(env, "status", "--failing")
    print("\n" + failing.stdout)
    assert failing.returncode == 0 and "workspace:72" in failing.stdout and "workspace:71" not in failing.stdout
    assert "workspace:71" in json.dumps(json.loads((await cli(env, "status", "--partner", "p", "--json")).stdout))

    # Notifications: 72 failing (dead-lettered), 73 failing (breaker) then recovered; never 71.
    def complete(records) -> bool:
        seen = {(orjson.loads(r.value)["destination_id"], orjson.loads(r.value)["state"]) for r in records}
        return {("workspace:72", "failing"), ("workspace:73", "failing"), ("workspace:73", "recovered")} <= seen

    notes = await consume(kafka, prefix + T.NOTIFICATIONS, 100, timeout=60, stop=complete)
    assert complete(notes)
    await asyncio.sleep(2)  # a few more notifier rounds: a change is announced once
    notes = [orjson.loads(r.value) for r in await consume(kafka, prefix + T.NOTIFICATIONS, 100, timeout=3)]
    pairs = [(n["destination_id"], n["state"]) for n in notes]
    assert sorted(pairs) == [("workspace:72", "failing"), ("workspace:73", "failing"), ("workspace:73", "recovered")]
    auth_note = next(n for n in notes if n["destination_id"] == "workspace:72")
    assert (auth_note["workspace_id"], auth_note["partner_id"], auth_note["status"]) == ("72", "p", 401)
    assert auth_note["reason"].startswith("HTTP 401") and auth_note["since"]
    # SREs: how many are failing, without a label per tenant.
    await until(lambda: metric(w, "streamer_destinations_failing") == 1, 30, "the failing-destinations gauge")
    assert metric(w, "streamer_notifications_total", state="recovered") == 1


async def test_settings_test_sends_a_test_event_through_the_real_sink(env, worker_factory, kafka, prefix, providers,
                                                                     s3, tmp_path):
    from streamer.dev.local import free_port
    from tests.support import accepted, admin_for, http_config, make_bucket, s3_config, s3_objects

    providers.faults["auth"] = Fault(statuses=[401])
    providers.faults["hec"] = Fault(statuses=[503])
    worker_factory().wait_ready()
    await configure(env, providers, {"81": "works", "82": "auth"})

    def settings_test(*args):
        return cli(env, "settings", "test", *args)

    def probe(name: str, config: dict):
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        return settings_test("--workspace", "81", "--file", str(tmp_path / f"{name}.json"), "--check", "probe")

    ok = await settings_test("--workspace", "81")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["tested_destination"] == "workspace:81"
    assert json.loads(ok.stdout)["check"] == "generic POST"

    # Probes write nothing: Datadog's key validation and Splunk HEC's health endpoint.
    valid = await probe("dd", http_config(providers, "datadog", "dd"))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert {k: json.loads(valid.stdout)[k] for k in ("check", "provider_status")} == {
        "check": "datadog validate", "provider_status": 200}
    invalid = await probe("dd-bad", http_config(providers, "datadog", "dd", api_key="not-the-api-key"))
    assert invalid.returncode == 1, invalid.stdout + invalid.stderr
    assert json.loads(invalid.stdout)["reason"].startswith("test probe failed: HTTP 403 (the API key is not valid)")
    assert "failed: test probe failed: HTTP 403" in invalid.stderr
    unhealthy = await probe("hec", http_config(providers, "splunk", "hec"))
    assert unhealthy.returncode == 1, unhealthy.stdout + unhealthy.stderr
    assert (json.loads(unhealthy.stdout)["check"], json.loads(unhealthy.stdout)["provider_status"]) == (
        "splunk health", 503)
    assert [path for _name, path in providers.probes] == [
        "/dd/dd/api/v1/validate", "/dd/dd/api/v1/validate", "/splunk/hec/services/collector/health"]
    assert providers.items("dd") == providers.items("hec") == []
    [item] = await providers.wait_items("works", 1)
    assert item["event"] == "streamer_destination_test"

    unauthorized = await settings_test("--workspace", "82")
    assert unauthorized.returncode == 1
    assert json.loads(unauthorized.stdout)["reason"].startswith("test delivery failed: HTTP 401")

    # A configuration tried before it is saved: S3 (a real PutObject under the prefix), then
    # an endpoint where nothing listens.
    bucket = f"b{prefix.strip('.').lower()}"
    await make_bucket(s3, bucket)
    found = await probe("s3", s3_config(s3, bucket, prefix="audit"))  # HeadBucket: nothing written
    assert found.returncode == 0, found.stdout + found.stderr
    assert json.loads(found.stdout)["check"] == "s3 HeadBucket"
    assert await s3_objects(s3, bucket, 0, timeout=0) == {}
    missing = await probe("s3-missing", s3_config(s3, bucket + "-missing", prefix="audit"))
    assert missing.returncode == 1 and json.loads(missing.stdout)["provider_status"] == 404, missing.stdout
    assert "s3 404 NoSuchBucket" in json.loads(missing.stdout)["reason"]
    stored = await settings_test("--workspace", "81", "--file", str(tmp_path / "s3.json"))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    keys = list(await s3_objects(s3, bucket, 1))
    assert len(keys) == 1 and keys[0].startswith("audit/streamer-test/")  # the write only
    down = {"destination": {"type": "http", "provider": "generic", "url": f"http://127.0.0.1:{free_port()}/x"}}
    async with admin_for(env) as admin:
        result = await admin.run("test_destination", workspace_id="81", config=down)
        assert result["status"] == "rejected" and "network error" in result["reason"], result
        # Nothing was saved by the tests: workspace 81 still goes to "works".
        await accepted(admin, "test_destination", workspace_id="81")
    assert len(await providers.wait_items("works", 2)) == 2

"""Foundation: real broker round trip, event models, topics as code, schemas, local dev command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamer.dev.local import free_port
from streamer.events.models import MODELS
from streamer.events.parse import Event, Rejection, derive_event_id, parse_event
from streamer.schemas import write_or_check
from streamer.topics_admin import apply_topics
from streamer.topics import TOPICS
from tests.support import consume, produce, uid

ROOT = Path(__file__).resolve().parent.parent

KIND_OF_SAMPLE = {
    "job_summary_succeeded": "job_summary",
    "job_summary_failed_numeric_id": "job_summary",
    "job_details_masked_step": "job_details",
    "user_activity_login": "user_activity",
    "user_activity_recipe_renamed_no_id": "user_activity",
}


async def test_produce_and_consume_through_the_real_broker(kafka, topics):
    topic = topics + "audit.jobs.summary.v1"
    records = [(f"ws{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(50)]
    await produce(kafka, topic, records)
    got = await consume(kafka, topic, 50)
    assert sorted(m.value for m in got) == sorted(v for _, v in records)


def test_every_sample_round_trips_through_the_models_unchanged(samples):
    assert set(samples) == set(KIND_OF_SAMPLE), "a new sample needs its kind listed here"
    for name, raw in samples.items():
        kind = KIND_OF_SAMPLE[name]
        original = orjson.loads(raw)
        event = parse_event(kind, raw)
        assert isinstance(event, Event), (name, event)
        assert orjson.loads(orjson.dumps(event.body)) == original  # job details keep their lines as text
        dumped = MODELS[kind].model_validate(original).model_dump(mode="json", exclude_unset=True)
        assert dumped == original, name
        # Byte-level: the message we send is the compact form of exactly the same JSON.
        assert orjson.loads(orjson.dumps(event.body)) == original


def test_ids_and_workspaces_are_taken_from_the_right_fields(samples):
    job = parse_event("job_summary", samples["job_summary_failed_numeric_id"])
    assert (job.workspace_id, job.event_id) == ("5234", "100")
    ua = parse_event("user_activity", samples["user_activity_login"])
    assert (ua.workspace_id, ua.event_id) == ("78125", "ua-5f0c2e9b-7d3a-4d7e-9a51-2b8f4c1e6a10")
    details = parse_event("job_details", samples["job_details_masked_step"])
    assert orjson.loads(orjson.dumps(details.body))["lines"][1]["input"] == {"data": "masked"}


def test_a_missing_user_activity_id_is_derived_stably(samples):
    raw = samples["user_activity_recipe_renamed_no_id"]
    a = parse_event("user_activity", raw)
    reordered = orjson.dumps(dict(reversed(list(orjson.loads(raw).items()))))
    b = parse_event("user_activity", reordered)
    assert a.event_id == b.event_id == derive_event_id(orjson.loads(raw))
    assert a.event_id.startswith("d-") and len(a.event_id) == 34
    other = orjson.loads(raw) | {"timestamp": "2026-03-15 08:02:42 UTC"}
    assert derive_event_id(other) != a.event_id


def _mutate(sample: bytes, fn) -> bytes:
    body = orjson.loads(sample)
    fn(body)
    return orjson.dumps(body)


BAD_EVENTS = [
    # (kind, sample, mutation or raw bytes, expected words in the reason)
    ("job_summary", None, b"{not json", "not valid UTF-8 JSON"),
    ("job_summary", None, b"[1, 2, 3]", "JSON list, not an object"),
    ("job_summary", None, b"\xff\xfe\x00", "not valid UTF-8 JSON"),
    ("job_summary", "job_summary_succeeded", lambda b: b.pop("id"), "'id' is missing"),
    ("job_summary", "job_summary_succeeded", lambda b: b["context"].pop("user_id"), "'context.user_id' is missing"),
    ("job_summary", "job_summary_succeeded", lambda b: b.pop("context"), "'context' is missing"),
    ("job_summary", "job_summary_succeeded", lambda b: b.update(recipe_id="abc"), "'recipe_id'"),
    ("job_summary", "job_summary_succeeded", lambda b: b.update(status="running"), "'status'"),
    ("job_summary", "job_summary_succeeded", lambda b: b.update(started_at="yesterday"), "'started_at'"),
    ("job_summary", "job_summary_succeeded", lambda b: b.update(completed_at="2026-03-14T09:30:02"),
     "'completed_at'"),
    ("job_summary", "job_summary_succeeded", lambda b: b.update(id=""), "'id'"),
    ("job_summary", "job_summary_succeeded", lambda b: b.update(id=None), "'id'"),
    ("job_details", "job_details_masked_step", lambda b: b.pop("lines"), "'lines' is missing"),
    ("job_details", "job_details_masked_step", lambda b: b.update(lines="x"), "'lines'"),
    ("user_activity", "user_activity_login", lambda b: b.pop("team"), "'team' is missing"),
    ("user_activity", "user_activity_login", lambda b: b["team"].pop("id"), "'team.id' is missing"),
    ("user_activity", "user_activity_login", lambda b: b.pop("event"), "'event' is missing"),
    ("user_activity", "user_activity_login", lambda b: b.update(event="User Login"), "'event'"),
    ("user_activity", "user_activity_login", lambda b: b.update(timestamp="2026-03-14T16:31:07Z"), "'timestamp'"),
    ("user_activity", "user_activity_login", lambda b: b.update(timestamp="2026-13-14 16:31:07 UTC"), "'timestamp'"),
]


@pytest.mark.parametrize("kind,sample,change,expected", BAD_EVENTS)
def test_bad_events_are_rejected_with_the_field_named(samples, kind, sample, change, expected):
    raw = change if isinstance(change, bytes) else _mutate(samples[sample], change)
    result = parse_event(kind, raw)
    assert isinstance(result, Rejection), result
    assert expected in result.reason, result.reason


def test_record_key_must_match_the_workspace_and_size_is_bounded(samples):
    raw = samples["job_summary_succeeded"]
    assert isinstance(parse_event("job_summary", raw, key=b"78125"), Event)
    wrong = parse_event("job_summary", raw, key=b"99999")
    assert isinstance(wrong, Rejection) and "does not match" in wrong.reason
    big = parse_event("job_summary", raw, max_bytes=100)
    assert isinstance(big, Rejection) and "over the 100 byte limit" in big.reason
    assert "tombstone" in parse_event("job_summary", None).reason


async def test_topics_apply_is_idempotent_and_reports_drift(kafka):
    prefix = f"t{uid()}."
    first = await apply_topics(kafka, prefix)
    assert first.ok and len(first.created) == len(TOPICS)
    second = await apply_topics(kafka, prefix)
    assert second.ok and second.created == [] and len(second.unchanged) == len(TOPICS)

    drifted = f"t{uid()}."
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    await admin.create_topics([NewTopic(drifted + "audit.jobs.summary.v1", 2, 1)])
    await admin.close()
    report = await apply_topics(kafka, drifted)
    assert not report.ok
    assert any("audit.jobs.summary.v1: partitions 2, defined 6" in d for d in report.drift), report.drift
    again = await apply_topics(kafka, drifted)  # nothing was changed by the first run
    assert any("partitions 2, defined 6" in d for d in again.drift)


def test_topics_apply_cli_exits_non_zero_on_drift(kafka):
    prefix = f"t{uid()}."
    run = lambda: subprocess.run([sys.executable, "-m", "streamer", "topics", "apply", "--bootstrap-servers",
                                  kafka, "--prefix", prefix], capture_output=True, text=True)
    first = run()
    assert first.returncode == 0 and first.stdout.count("created") == len(TOPICS), first.stdout + first.stderr
    second = run()
    assert second.returncode == 0 and "created" not in second.stdout


def test_committed_schemas_are_current():
    assert write_or_check(ROOT / "schemas", check=True) == [], "run `streamer schemas` and commit"


def test_dev_up_status_down_from_the_cache(tmp_path):
    env = {**os.environ, "STREAMER_DEV_DIR": str(tmp_path), "STREAMER_CACHE_DIR": str(ROOT / ".cache")}
    kp, sp = str(free_port()), str(free_port())
    cli = lambda *a: subprocess.run([sys.executable, "-m", "streamer", "dev", *a, "--kafka-port", kp,
                                     "--s3-port", sp], env=env, capture_output=True, text=True, timeout=180)
    up = cli("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"kafka listening on 127.0.0.1:{kp}" in up.stdout
        assert f"s3    listening on http://127.0.0.1:{sp}" in up.stdout
        status = cli("status")
        assert status.returncode == 0 and status.stdout.count("running") == 2
    finally:
        down = cli("down")
    assert "kafka: stopped" in down.stdout and "s3: stopped" in down.stdout
    assert cli("status").returncode == 3


def test_a_broker_that_cannot_start_reports_its_log(tmp_path, monkeypatch):
    from streamer.dev.local import Kafka, ServiceError

    monkeypatch.setenv("STREAMER_CACHE_DIR", str(ROOT / ".cache"))
    monkeypatch.setenv("STREAMER_KAFKA_HEAP", "1k")  # the JVM refuses to start with this heap
    broker = Kafka(tmp_path, free_port())
    with pytest.raises(ServiceError) as err:
        broker.start(timeout=60)
    text = str(err.value)
    assert "exited with code" in text and "last lines of" in text and "heap" in text.lower()
    assert broker.pid() is None

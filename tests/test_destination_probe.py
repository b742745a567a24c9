"""`settings test --check probe`: the probe requests (pure), and each sink's probe against real
servers without a broker: the providers' contract servers (Datadog validate, Splunk HEC
health), moto S3 (HeadBucket), the SSRF guard on probe URLs, and the write a provider
without a probe endpoint falls back to. The worker and CLI path: tests/test_status_e2e.py."""

from __future__ import annotations

import os
import uuid

import orjson
import pytest

from streamer.dev.harness import make_bucket
from streamer.settings.rules import TestTarget
from streamer.settings.secrets import encrypt
from streamer.sinks.http.datadog import validate_url
from streamer.sinks.http.service import HttpSink
from streamer.sinks.http.splunk import health_url
from streamer.sinks.s3.request import bucket_url, classify_head
from streamer.sinks.s3.service import S3Sink
from streamer.sinks.testing import planned_check, run_test
from tests.providers import DD_API_KEY, SPLUNK_TOKEN, Fault

KEYS = {"k1": os.urandom(32)}
DEST_ID = "workspace:p1"


def _secret(value: str, field: str) -> dict:
    return {"enc": encrypt(value, KEYS, "ws/p1", f"destination.{field}")}


def _datadog(providers, name: str, key: str = DD_API_KEY, url: str | None = None) -> dict:
    return {"type": "http", "provider": "datadog", "url": url or providers.url("datadog", name),
            "api_key": _secret(key, "api_key")}


def _splunk(providers, name: str) -> dict:
    return {"type": "http", "provider": "splunk", "url": providers.url("splunk", name),
            "token": _secret(SPLUNK_TOKEN, "token")}


# -- the requests (pure) ----------------------------------------------------------------------

def test_datadog_is_validated_at_its_sites_api_host_and_a_relay_at_its_own_base():
    assert validate_url("https://http-intake.logs.datadoghq.eu/api/v2/logs") == "https://api.datadoghq.eu/api/v1/validate"
    assert validate_url("https://http-intake.logs.us3.datadoghq.com/api/v2/logs?ddsource=x") == \
        "https://api.us3.datadoghq.com/api/v1/validate"
    assert validate_url("https://relay.example.com/dd/api/v2/logs") == "https://relay.example.com/dd/api/v1/validate"


def test_splunk_health_is_on_the_collector_the_events_go_to():
    assert health_url("https://hec.example.com:8088/services/collector/event") == \
        "https://hec.example.com:8088/services/collector/health"
    assert health_url("https://example.com/proxy/services/collector/event/1.0?channel=c") == \
        "https://example.com/proxy/services/collector/health"


def test_head_bucket_urls_follow_botocores_endpoint_rules():
    assert bucket_url("us-east-1", "http://127.0.0.1:5000", "bkt") == "http://127.0.0.1:5000/bkt"
    assert bucket_url("eu-west-1", None, "bkt") == "https://bkt.s3.eu-west-1.amazonaws.com/"


def test_a_head_bucket_answer_is_read_from_its_status():
    missing = classify_head(404)
    assert (missing.ok, missing.status, missing.retryable) == (False, 404, False)
    assert missing.error.startswith("s3 404 NoSuchBucket")
    assert "s3:ListBucket" in classify_head(403).error  # a writer-only policy is told apart
    assert "eu-west-1" in classify_head(301, "eu-west-1").error
    assert classify_head(200).ok and classify_head(503).retryable


@pytest.mark.parametrize("kind, dest, mode, check, probe", [
    ("http", {"provider": "datadog"}, "probe", "datadog validate", True),
    ("http", {"provider": "splunk"}, "probe", "splunk health", True),
    ("s3", {}, "probe", "s3 HeadBucket", True),
    ("azure_blob", {}, "probe", "azure_blob Get Container Properties", True),
    ("gcs", {}, "probe", "gcs Get Bucket", True),
    ("http", {"provider": "sumo"}, "probe", "sumo POST (sumo has no probe endpoint: the test event was written)", False),
    ("http", {}, "probe", "generic POST (generic has no probe endpoint: the test event was written)", False),
    ("azure_monitor", {}, "probe", "azure_monitor POST (azure_monitor has no probe endpoint: the test event was "
                                   "written)", False),
    ("http", {"provider": "datadog"}, "write", "datadog POST", False),
    ("s3", {}, "write", "s3 PutObject", False),
])
def test_the_check_a_test_makes_is_named(kind, dest, mode, check, probe):
    assert planned_check(kind, dest, mode) == (check, probe)


# -- REST providers: their contract servers -----------------------------------------------------

async def test_datadog_validate_passes_the_right_key_and_refuses_a_wrong_one_writing_nothing(providers):
    sink = HttpSink(KEYS, allow_private=True, concurrency=2, timeout_s=5)
    try:
        good = await sink.probe(_datadog(providers, "dd"), DEST_ID)
        bad = await sink.probe(_datadog(providers, "dd", key="not-the-key-0123"), DEST_ID)
    finally:
        await sink.close()
    assert good.ok and good.status == 200, good
    assert (bad.ok, bad.status) == (False, 403)
    assert bad.error.startswith("HTTP 403 (the API key is not valid)") and "not-the-key-0123" not in bad.error
    assert providers.probes == [("dd", "/dd/dd/api/v1/validate")] * 2
    assert providers.received == []


async def test_splunk_health_reports_an_unhealthy_collector(providers):
    providers.faults["hec"] = Fault(statuses=[503])
    sink = HttpSink(KEYS, allow_private=True, concurrency=2, timeout_s=5)
    try:
        unhealthy = await sink.probe(_splunk(providers, "hec"), DEST_ID)
        healthy = await sink.probe(_splunk(providers, "hec"), DEST_ID)
    finally:
        await sink.close()
    assert (unhealthy.ok, unhealthy.status) == (False, 503)
    assert unhealthy.error.startswith("HTTP 503 (HEC is unhealthy: its queues are full)")
    assert healthy.ok and providers.received == []


async def test_probe_urls_are_held_to_the_ssrf_guard(providers):
    """A private literal is refused before any request; a name that resolves to one is
    refused by the pool's resolver at connect time. Neither reaches the server."""
    sink = HttpSink(KEYS, allow_private=False, concurrency=2, timeout_s=5)
    by_name = f"http://localhost:{providers.port}/dd/dd"
    try:
        literal = await sink.probe(_datadog(providers, "dd"), DEST_ID)
        named = await sink.probe(_datadog(providers, "dd", url=by_name), DEST_ID)
    finally:
        await sink.close()
    assert literal.error.startswith("destination refused: url host 127.0.0.1") and not literal.retryable
    assert not named.ok and named.error.startswith("network error: ClientConnectorDNSError"), named
    assert providers.probes == []


async def test_a_provider_without_a_probe_endpoint_is_written_to_and_the_check_says_so(providers):
    sink = HttpSink(KEYS, allow_private=True, concurrency=2, timeout_s=5)
    dest = {"type": "http", "provider": "sumo", "url": providers.url("sumo", "sumo")}
    target = TestTarget(DEST_ID, "http", orjson.dumps(dest), "", "p1", check="probe")
    try:
        report = await run_test(sink, target, "cmd-probe-1", 5)
    finally:
        await sink.close()
    assert report.ok and not report.probe and report.check.startswith("sumo POST (sumo has no probe endpoint")
    assert [i["id"] for i in providers.items("sumo")] == ["streamer-test-cmd-probe-1"]


# -- S3: HeadBucket against moto ------------------------------------------------------------------

async def test_head_bucket_finds_an_existing_bucket_and_a_missing_one_writing_nothing(s3):
    from tests.support import s3_objects

    bucket = f"probe-{uuid.uuid4().hex[:10]}"
    await make_bucket(s3, bucket)
    dest = {"type": "s3", "bucket": bucket, "endpoint_url": s3, "access_key_id": "testing",
            "secret_access_key": _secret("testing", "secret_access_key")}
    sink = S3Sink(KEYS, None, 4, 5, allow_private=True)
    try:
        target = TestTarget(DEST_ID, "s3", orjson.dumps(dest), "audit", "p1", check="probe")
        found = await run_test(sink, target, "cmd-probe-2", 5)
        missing = await sink.probe({**dest, "bucket": f"missing-{uuid.uuid4().hex[:8]}"}, DEST_ID)
    finally:
        await sink.close()
    assert (found.ok, found.probe, found.check, found.status) == (True, True, "s3 HeadBucket", 200), found
    assert (missing.ok, missing.status) == (False, 404) and "NoSuchBucket" in missing.error
    assert await s3_objects(s3, bucket, 0, timeout=0) == {}


async def test_a_tenants_private_s3_endpoint_is_refused_before_the_probe():
    sink = S3Sink(KEYS, None, 4, 5, allow_private=False)
    try:
        refused = await sink.probe({"type": "s3", "bucket": "bkt", "endpoint_url": "http://10.0.0.1:9000"}, DEST_ID)
    finally:
        await sink.close()
    assert not refused.ok and not refused.retryable and refused.error.startswith("s3 endpoint refused")

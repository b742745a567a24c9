"""Azure Monitor Logs requests without I/O: URLs, the token grant and its renewal time, the
record each event becomes, batches within 1 MB, and which statuses retry."""

from __future__ import annotations

import gzip
import urllib.parse

import orjson
import pytest

from streamer.sinks.azure_monitor.request import (MAX_BYTES, classify, encode, ingestion_url, record, token_expiry,
                                                  token_form, token_url)
from streamer.sinks.base import Delivery

DEST = {"endpoint": "https://dce-1.westeurope-1.ingest.monitor.azure.com/", "rule_id": "dcr-abc",
        "stream": "Custom-Audit_CL", "tenant_id": "t1", "client_id": "c1"}


def delivery(i: int, message: bytes = b'{"id": 1}') -> Delivery:
    return Delivery("workspace:w1", b"{}", "w1", f"e{i}", "job_summary", message, produced_ms=1_773_500_000_000)


def test_urls_and_the_client_credentials_grant():
    assert ingestion_url(DEST) == ("https://dce-1.westeurope-1.ingest.monitor.azure.com/dataCollectionRules/dcr-abc"
                                   "/streams/Custom-Audit_CL?api-version=2023-01-01")
    assert token_url(DEST) == "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
    assert token_url({**DEST, "authority": "https://login.microsoftonline.us/"}).startswith("https://login.microsoftonline.us/t1/")
    form = urllib.parse.parse_qs(token_form("c1", "s&e=cret").decode())
    assert form == {"grant_type": ["client_credentials"], "client_id": ["c1"], "client_secret": ["s&e=cret"],
                    "scope": ["https://monitor.azure.com//.default"]}
    assert token_expiry({"expires_in": 3599}, 100.0) == 100.0 + 3599 - 300
    assert token_expiry({"expires_in": 60}, 100.0) == 130.0  # short-lived: half way, not every request


def test_a_record_has_fixed_columns_and_the_message_as_json_when_it_is_json():
    r = orjson.loads(record(delivery(1, b'{"id": "j1", "n": [1, 2]}')))
    assert r == {"TimeGenerated": "2026-03-14T14:53:20Z", "WorkspaceId": "w1", "EventId": "e1",
                 "Kind": "job_summary", "Message": {"id": "j1", "n": [1, 2]}}
    assert orjson.loads(record(delivery(2, b"plain text")))["Message"] == "plain text"


def test_batches_stay_within_1_mb_and_an_item_over_it_is_rejected():
    big = b'{"pad": "' + b"x" * 400_000 + b'"}'
    deliveries = [delivery(i, big) for i in range(5)] + [delivery(9, b'{"pad": "' + b"y" * MAX_BYTES + b'"}')]
    encoded = encode({**DEST, "gzip": True}, deliveries)
    assert [r.index for r in encoded.rejected] == [5] and "limit" in encoded.rejected[0].reason
    assert sorted(i for r in encoded.requests for i in r.items) == [0, 1, 2, 3, 4]
    for r in encoded.requests:
        body = gzip.decompress(r.body)
        assert len(body) <= MAX_BYTES and len(orjson.loads(body)) == len(r.items)
        assert r.headers["Content-Encoding"] == "gzip" and r.headers["Content-Type"] == "application/json"
    assert len(encoded.requests) == 3


@pytest.mark.parametrize("status, retryable", [(400, False), (401, False), (403, False), (404, False), (413, False),
                                               (429, True), (500, True), (503, True), (408, True)])
def test_which_statuses_retry(status, retryable):
    outcome = classify(status, b"", 7.0)
    assert not outcome.ok and outcome.retryable is retryable
    assert outcome.retry_after == (7.0 if retryable else None)
    assert classify(204, b"").ok


def test_endpoint_and_authority_pass_the_ssrf_guard():
    import os

    from streamer.settings.model import Configuration
    from streamer.settings.rules import Policy, check_configuration
    from streamer.settings.secrets import encrypt

    keys = {"k1": os.urandom(32)}
    policy = Policy({}, keys, allow_private_destinations=False, command_max_age_s=300)
    resolved = {"dce-1.westeurope-1.ingest.monitor.azure.com": ["20.50.1.1"], "login.microsoftonline.com": ["20.190.1.1"]}

    def config(**over) -> Configuration:
        dest = {"type": "azure_monitor", **{k: v for k, v in DEST.items()}, "client_secret": {"enc": encrypt("s", keys, "ws/1", "destination.client_secret")},
                **over}
        return Configuration.model_validate({"destination": dest})

    assert check_configuration(config(), policy, "ws/1", resolved) == (None, None)
    reason, _ = check_configuration(config(endpoint="https://10.1.2.3"), policy, "ws/1", resolved)
    assert reason and reason.startswith("azure_monitor endpoint")
    reason, _ = check_configuration(config(authority="http://169.254.169.254"), policy, "ws/1", resolved)
    assert reason and reason.startswith("azure_monitor authority")

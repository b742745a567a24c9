"""Splunk HEC indexer acknowledgement: a delivery is done only once Splunk says it is indexed.

The contract server behaves as HEC does with acknowledgement on for a token: it wants a
channel, answers an ackId, and records the events only when an ack query finds them indexed.
One destination's acks come; the other's never do, so its event is parked for a retry
instead of counted as delivered.
"""

from __future__ import annotations

import orjson

from streamer import topics as T
from streamer.sinks.http import splunk
from tests.support import accepted, admin_for, consume, http_config, job_event, produce
from tests.test_reliability_e2e import FAST_RETRY, metric, until


def test_ack_requests_and_answers():
    assert splunk.ack_url("https://hec.example.com:8088/services/collector/event?x=1", "c-1") == (
        "https://hec.example.com:8088/services/collector/ack?channel=c-1")
    assert splunk.ack_id(b'{"text":"Success","code":0,"ackId":7}') == 7
    assert splunk.ack_id(b'{"text":"Success","code":0}') is None  # acknowledgement off for the token
    assert splunk.ack_query(7) == b'{"acks":[7]}'
    assert splunk.acknowledged(b'{"acks":{"7":true}}', 7)
    assert not splunk.acknowledged(b'{"acks":{"7":false}}', 7) and not splunk.acknowledged(b"<html>", 7)


async def test_a_delivery_counts_once_splunk_has_indexed_it(env, worker_factory, kafka, prefix, providers):
    providers.splunk_acks.update({"acked": "ok", "unacked": "never"})
    w = worker_factory({**FAST_RETRY, "STREAMER_RETRY_BASE_S": "5", "STREAMER_RETRY_MAX_BACKOFF_S": "30"})
    w.wait_ready()
    async with admin_for(env) as admin:
        for ws, name in (("51", "acked"), ("52", "unacked")):
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws,
                           config=http_config(providers, "splunk", name, indexer_acknowledgements=True))
    await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"51", orjson.dumps(job_event(51, "acked-1"))),
                                                   (b"52", orjson.dumps(job_event(52, "unacked-1")))])

    await until(lambda: any(r.name == "acked" for r in providers.received), 30, "the acknowledged event")
    got = next(r for r in providers.received if r.name == "acked")
    assert [i["event"]["id"] for i in got.items] == ["acked-1"]
    assert got.headers.get("X-Splunk-Request-Channel") and providers.ack_queries["acked"] >= 1

    parked = await consume(kafka, prefix + T.DELIVERIES_RETRY, 1, timeout=30,
                           predicate=lambda m: m.key == b"workspace:52")
    assert parked and b"did not acknowledge indexing" in dict(parked[0].headers)["hist"]
    assert providers.ack_queries["unacked"] >= 2  # asked again and again within the wait, then gave up
    assert not any(r.name == "unacked" for r in providers.received)
    await until(lambda: metric(w, "streamer_deliveries_total", outcome="delivered") == 1, 10, "one delivered")

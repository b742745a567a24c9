"""Azure Monitor Logs, end to end: real broker, a worker subprocess, a contract server for
Entra and the Logs Ingestion API (tests/azure_monitor_contract.py).

Events large enough to need more than one 1 MB call, a 429 with Retry-After first (retried),
a destination with a wrong client secret (Entra refuses: a dead letter at once), and a scan
of the topics and the worker's log for the secret.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from streamer import topics as T
from tests.azure_monitor_contract import CLIENT_ID, CLIENT_SECRET, RULE, STREAM, TENANT, MonitorServer
from tests.support import accepted, admin_for, consume, job_event, produce


def monitor_config(server: MonitorServer, secret: str = CLIENT_SECRET) -> dict:
    return {"jobs": "status", "user_activity": True,
            "destination": {"type": "azure_monitor", "endpoint": server.base, "rule_id": RULE, "stream": STREAM,
                            "tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": secret,
                            "authority": server.base, "gzip": True}}


async def test_batches_within_1_mb_retry_after_429_and_a_refused_secret(env, worker_factory, kafka, prefix):
    server = MonitorServer(statuses=[429], retry_after="1")
    await server.start()
    try:
        w = worker_factory()
        w.wait_ready()
        async with admin_for(env) as admin:
            for ws in ("m1", "m2"):
                await accepted(admin, "register_workspace", workspace_id=ws, partner_id="mp", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id="m1", config=monitor_config(server))
            await accepted(admin, "put_workspace_config", workspace_id="m2",
                           config=monitor_config(server, "not-the-secret"))
        jobs = [job_event("m1", f"j-m1-{i}", pad=400_000) for i in range(4)]  # ~1.6 MB together
        await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"m1", orjson.dumps(j)) for j in jobs]
                      + [(b"m2", orjson.dumps(job_event("m2", "j-m2")))])
        deadline = time.monotonic() + 60
        while len(server.records()) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        records = server.records()
        assert sorted(r["EventId"] for r in records) == [f"j-m1-{i}" for i in range(4)]
        assert all(r["WorkspaceId"] == "m1" and r["Kind"] == "job_summary" for r in records)
        assert {r["Message"]["id"] for r in records} == {j["id"] for j in jobs}  # the message as JSON
        assert len(server.calls) >= 2 and all(c.raw_size <= 1_000_000 for c in server.calls)
        assert not server.statuses  # the 429 was answered, and the batch came again
        assert len(server.tokens) == 1  # one token, cached across calls

        letters = await consume(kafka, prefix + T.DEAD_LETTERS, 1)
        assert [dict(m.headers)["eid"] for m in letters] == [b"j-m2"]
        assert b"token HTTP 401" in dict(letters[0].headers)["err"]
        assert server.refused == ["wrong client secret"]
        w.stop()
    finally:
        await server.stop()
    seen = [w.log().encode()]
    for topic in (T.SETTINGS_COMMANDS, T.SETTINGS_RESULTS, T.SETTINGS_TABLE, T.DELIVERIES_HTTP, T.DEAD_LETTERS):
        for m in await consume(kafka, prefix + topic, 10_000, timeout=3):
            seen.append((m.key or b"") + (m.value or b"") + b"".join(v for _, v in m.headers or ()))
    assert not any(CLIENT_SECRET.encode() in b for b in seen), "the client secret reached a topic or the log"
    # Nor the wrong one, though the token endpoint echoed it into the dead letter's reason.
    assert not any(b"not-the-secret" in b for b in seen), "an echoed secret reached a topic or the log"

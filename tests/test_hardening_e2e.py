"""Control plane and input hardening (issue 17) through the real broker, a real worker and real
destinations. The pure rules are in tests/test_hardening.py; the fuzz test in tests/test_fuzz_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import orjson

from streamer import topics as T
from streamer.settings import signing
from tests.support import (SIGNING_KEY, accepted, admin_for, consume, http_config, job_event, make_bucket,
                           produce, s3_objects)

SUMMARY = "audit.jobs.summary.v1"
KEY = __import__("base64").b64decode(SIGNING_KEY)


def _row(ws: str, config: dict | None) -> tuple[bytes, bytes]:
    return (f"ws/{ws}".encode(), orjson.dumps({
        "registration": {"workspace_id": ws, "partner_id": "P", "role": "customer", "external_id": None},
        "config": config}))


async def test_queued_broken_commands_each_get_one_result_and_the_guard_holds_at_connect_time(
        env, worker_factory, kafka, prefix, s3):
    """Points 1, 2 and 8: with no worker running, a queue of broken, hostile and valid
    commands builds up for longer than the freshness window; then a worker answers every
    record exactly once, accepts the valid ones, and refuses private destinations that
    reached the settings table by other means at connect time."""
    bucket = prefix.rstrip(".").lower() + "-guard"
    await make_bucket(s3, bucket)
    port = s3.rsplit(":", 1)[1]
    # Rows written straight to the table (as a restored backup or an older version could
    # have): only the sinks' connect-time guard stands between them and the addresses.
    await produce(kafka, prefix + T.SETTINGS_TABLE, [
        _row("h1", {"jobs": "status", "destination": {"type": "http", "provider": "generic",
                                                      "url": "https://127.0.0.1:1/x"}}),
        _row("s1", {"jobs": "status", "destination": {"type": "s3", "bucket": bucket,
                                                      "endpoint_url": f"http://127.0.0.1:{port}"}}),
        _row("s2", {"jobs": "status", "destination": {"type": "s3", "bucket": bucket,
                                                      "endpoint_url": f"http://localhost:{port}"}}),
    ])
    async with admin_for(env) as admin:
        s3_own = {"jobs": "status", "destination": {"type": "s3", "bucket": "bkt-seven", "access_key_id": "AK",
                                                    "secret_access_key": "seven-secret"}}
        for_7 = admin.command("put_workspace_config", workspace_id="7", config=s3_own)
        moved = admin.command("put_workspace_config", workspace_id="8", config=s3_own)
        moved["config"] = for_7["config"]  # workspace 7's envelope in workspace 8's command
        moved = signing.signed(moved, "test-k1", KEY)

        def put(ws: str, dest: dict) -> dict:
            return admin.command("put_workspace_config", workspace_id=ws, config={"jobs": "status", "destination": dest})

        queue = [
            ("rejected", "not signed", orjson.dumps({"type": "put_workspace_config", "command_id": "cmd-unsigned-1",
                                                     "config": "x"})),
            ("rejected", "field 'config'", orjson.dumps(signing.signed(
                {"type": "put_workspace_config", "command_id": "cmd-list-config", "issued_at": "2026-01-01T00:00:00+00:00",
                 "actor": "a", "workspace_id": "7", "config": ["x"]}, "test-k1", KEY))),
            ("rejected", "not valid JSON", b"\xff{nope"),
            ("accepted", None, orjson.dumps(admin.command("register_workspace", workspace_id="7", partner_id="P",
                                                          role="customer"))),
            ("accepted", None, orjson.dumps(admin.command("register_workspace", workspace_id="8", partner_id="P",
                                                          role="customer"))),
            ("rejected", "RFC 6598", orjson.dumps(put("7", {"type": "http", "url": "https://100.100.100.200/latest"}))),
            ("rejected", "RFC 6598", orjson.dumps(put("7", {"type": "s3", "bucket": "bkt",
                                                            "endpoint_url": "https://100.64.0.10"}))),
            ("rejected", "ws/8", orjson.dumps(moved)),
            # The operator's private network (STREAMER_PRIVATE_NETWORKS_ALLOWED below) and only it.
            ("accepted", None, orjson.dumps(put("8", {"type": "http", "url": "https://10.20.1.2/intake"}))),
            ("rejected", "(private)", orjson.dumps(put("8", {"type": "http", "url": "https://10.21.0.1/intake"}))),
            ("rejected", "secret destination.secret_headers.X-Key is empty or contains a control character",
             orjson.dumps(put("8", {"type": "http", "url": "https://10.20.1.2/intake",
                                    "secret_headers": {"X-Key": "k\r\nX-Injected: 1"}}))),
            ("accepted", None, orjson.dumps(for_7)),
        ]
        for _status, _why, raw in queue:
            await admin.send_raw(raw)
    # Older than the 5 s window by the time the worker reads them: judged by record time, they are fresh.
    await asyncio.sleep(7)
    w = worker_factory({"STREAMER_ALLOW_PRIVATE_DESTINATIONS": "false", "STREAMER_COMMAND_MAX_AGE_S": "5",
                        "STREAMER_PRIVATE_NETWORKS_ALLOWED": "10.20.0.0/16"})
    w.wait_ready()
    results = [orjson.loads(m.value) for m in await consume(kafka, prefix + T.SETTINGS_RESULTS, len(queue), timeout=60)]
    by_offset: dict[int, list[dict]] = {}
    for r in results:
        by_offset.setdefault(r["offset"], []).append(r)
    assert sorted(by_offset) == list(range(len(queue))), results
    for offset, (status, why, _raw) in enumerate(queue):
        (result,) = by_offset[offset]
        assert result["status"] == status, (offset, result)
        assert why is None or why in result["reason"], (offset, why, result["reason"])

    await produce(kafka, prefix + SUMMARY, [(ws.encode(), orjson.dumps(job_event(ws, f"j-{ws}")))
                                            for ws in ("h1", "s1", "s2")])
    dead = await consume(kafka, prefix + T.DEAD_LETTERS, 2, timeout=30)
    errors = {m.key.decode(): dict(m.headers)["err"].decode() for m in dead}
    assert "not a globally routable address (loopback)" in errors["workspace:h1"], errors
    assert "s3 endpoint refused" in errors["workspace:s1"] and "loopback" in errors["workspace:s1"], errors
    parked = await consume(kafka, prefix + T.DELIVERIES_RETRY, 1, timeout=30,
                           predicate=lambda m: m.key == b"workspace:s2")
    assert parked, "the localhost endpoint was neither refused nor parked"
    assert await s3_objects(s3, bucket, 1, timeout=3) == {}  # nothing reached the private store
    assert "Traceback" not in w.log()


async def test_echoed_secrets_are_redacted_and_odd_values_pass_exactly_or_are_rejected(
        env, worker_factory, kafka, prefix, providers, s3):
    """Points 4, 6 and 7 through a worker: a Datadog destination that echoes its (wrong)
    key, integers beyond 64 bits, an id beyond 64 bits, and a job handle that climbs folders."""
    wrong_key = "wrong-DD-key-5f1e9a77"
    bucket = prefix.rstrip(".").lower() + "-keys"
    await make_bucket(s3, bucket)
    w = worker_factory()
    w.wait_ready()
    async with admin_for(env) as admin:
        for ws in ("21", "22", "23"):
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="P", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id="21",
                       config=http_config(providers, "datadog", "echo", api_key=wrong_key))
        await accepted(admin, "put_workspace_config", workspace_id="22", config=http_config(providers, "generic", "big"))
        await accepted(admin, "put_workspace_config", workspace_id="23", config={
            "jobs": "status", "destination": {"type": "s3", "bucket": bucket, "endpoint_url": s3}})
    big = orjson.dumps(job_event("22", "j-big"))[:-1] + b',"big":1208925819614629174706176,"n":99999999999999999999}'
    big_id = orjson.dumps(job_event("22", "j-x"))[:-1] + b',"id":1208925819614629174706176}'
    await produce(kafka, prefix + SUMMARY, [
        (b"21", orjson.dumps(job_event("21", "j-echo"))), (b"22", big), (b"22", big_id),
        (b"23", orjson.dumps(job_event("23", "j-x/../../24/jobs"))), (b"23", orjson.dumps(job_event("23", "j-safe")))])

    # 6: exact pass-through, and a clear reason for an id beyond 64 bits.
    await providers.wait_items("big", 1)
    (received,) = [r for r in providers.received if r.name == "big"]
    assert b'"big":1208925819614629174706176' in received.body and b'"n":99999999999999999999' in received.body
    assert json.loads(received.body)["big"] == 1208925819614629174706176
    rejected = {orjson.loads(m.value).get("id") if m.value[:1] == b"{" else None: dict(m.headers)["reason"].decode()
                for m in await consume(kafka, prefix + T.REJECTED, 2, timeout=30)}
    assert any("outside the 64-bit range" in r for r in rejected.values()), rejected
    # 7: the climbing handle is rejected with the reason, the safe one is stored.
    assert "cannot be used in an object key" in rejected["j-x/../../24/jobs"]
    objects = await s3_objects(s3, bucket, 1)
    assert len(objects) == 1 and all(k.startswith("23/jobs/") and "j-safe" in k for k in objects)

    # 4: the echoed key is nowhere: dead-letter headers, the worker log, `streamer dlq`.
    (letter,) = await consume(kafka, prefix + T.DEAD_LETTERS, 1, timeout=30)
    headers = dict(letter.headers)
    assert b"API key *** is not valid" in headers["err"], headers["err"]
    cli_env = {**os.environ, **env}
    listed = subprocess.run([sys.executable, "-m", "streamer", "dlq", "list"], capture_output=True, text=True,
                            env=cli_env, timeout=60)
    inspected = subprocess.run([sys.executable, "-m", "streamer", "dlq", "inspect", "--partition",
                                str(letter.partition), "--offset", str(letter.offset)],
                               capture_output=True, text=True, env=cli_env, timeout=60)
    assert listed.returncode == 0 and "API key ***" in listed.stdout and inspected.returncode == 0
    w.stop()
    for blob in (headers["err"], headers["hist"], listed.stdout.encode(), inspected.stdout.encode(), w.log().encode()):
        assert wrong_key.encode() not in blob
    assert any(wrong_key in v for v in providers.violations)  # ...though the destination did echo it


def test_the_cli_refuses_locally_and_sends_nothing(env, topics, kafka, prefix, tmp_path):
    """Point 5: no worker runs; the CLI refuses bad configurations itself (exit 1 with the
    reason) and the commands topic stays empty."""
    cli_env = {**os.environ, **env, "STREAMER_ALLOW_PRIVATE_DESTINATIONS": "false"}
    cases = {
        "auth.yaml": ("destination:\n  type: http\n  url: https://93.184.215.14/logs\n"
                      "  headers:\n    Authorization: Bearer X-plain-token-1\n", "secret_headers"),
        "userinfo.yaml": ("destination:\n  type: http\n  url: https://user:X-plain-pw-2@93.184.215.14/logs\n",
                          "credentials"),
        "private.yaml": ("destination:\n  type: http\n  url: https://10.1.2.3/logs\n", "private"),
        "template.yaml": ("template: '" + "x" * 70_000 + "'\ndestination:\n  type: http\n"
                          "  url: https://93.184.215.14/logs\n", "limit of 65536 bytes"),
    }
    for name, (text, why) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        out = subprocess.run([sys.executable, "-m", "streamer", "settings", "put-workspace", "--workspace", "7",
                              "--file", str(path)], capture_output=True, text=True, env=cli_env, timeout=60)
        assert out.returncode == 1, (name, out.returncode, out.stdout, out.stderr)
        assert why in out.stderr and json.loads(out.stdout)["sent"] is False, (name, out.stderr)
    sent = asyncio.run(consume(kafka, prefix + T.SETTINGS_COMMANDS, 1, timeout=3))
    assert sent == []

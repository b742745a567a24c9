"""Settings control plane end to end: rules, security, two workers, recovery, no plaintext secrets."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import orjson

from streamer import topics as T
from streamer.admin import build_command, read_settings
from streamer.settings import signing
from tests.support import (SIGNING_KEY, accepted, admin_for, consume, http_config, job_event,
                           produce, s3_config)

SUMMARY = "audit.jobs.summary.v1"


async def deliver_and_expect(kafka, prefix, providers, ws: str, expect: str | None, tag: str) -> None:
    """Produce one event of `ws` and check it reaches exactly `expect` (or nothing)."""
    before = {r.name: len(r.items) for r in providers.received}
    await produce(kafka, prefix + SUMMARY, [(ws.encode(), orjson.dumps(job_event(ws, f"j-{tag}")))])
    if expect is None:
        await asyncio.sleep(2)
    else:
        got = await providers.wait_items(expect, providers.items(expect).__len__() + 1)
        assert got[-1]["id"] == f"j-{tag}", (tag, got[-1])
    received = [(r.name, i["id"]) for r in providers.received for i in r.items if i["id"] == f"j-{tag}"]
    assert received == ([(expect, f"j-{tag}")] if expect else []), (tag, received, before)


async def test_resolution_rules_through_the_worker(env, worker_factory, kafka, prefix, providers):
    worker_factory().wait_ready()
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="101", partner_id="P", role="customer",
                       external_id="cust-101")
        await accepted(admin, "register_workspace", workspace_id="100", partner_id="P", role="admin")
        await accepted(admin, "put_workspace_config", workspace_id="101", config=http_config(providers, "generic", "own-101"))
        # Partner-wide off: the admin workspace's own configuration applies to it.
        await accepted(admin, "put_workspace_config", workspace_id="100", config=http_config(providers, "generic", "own-100"))
        await deliver_and_expect(kafka, prefix, providers, "101", "own-101", "a")
        await deliver_and_expect(kafka, prefix, providers, "100", "own-100", "b")

        # Partner-wide on: it covers the customer and the partner's admin workspace.
        await accepted(admin, "put_partner_config", partner_id="P", config=http_config(providers, "generic", "wide-P"))
        await deliver_and_expect(kafka, prefix, providers, "101", "wide-P", "c")
        await deliver_and_expect(kafka, prefix, providers, "100", "wide-P", "d")

        # A customer's own put is rejected while it is on, with a reason naming it.
        r = await admin.run("put_workspace_config", workspace_id="101", config=http_config(providers, "generic", "x"))
        assert r["status"] == "rejected" and "partner-wide" in r["reason"] and "partner P" in r["reason"]
        # A disabled partner-wide configuration does not apply.
        await accepted(admin, "put_partner_config", partner_id="P",
                       config={**http_config(providers, "generic", "wide-P"), "enabled": False})
        await deliver_and_expect(kafka, prefix, providers, "101", "own-101", "e")

        await accepted(admin, "put_partner_config", partner_id="P", config=http_config(providers, "generic", "wide-P"))
        await deliver_and_expect(kafka, prefix, providers, "101", "wide-P", "f")
        # Partner-wide deleted: the customer's earlier configuration applies again.
        await accepted(admin, "delete_partner_config", partner_id="P")
        await deliver_and_expect(kafka, prefix, providers, "101", "own-101", "g")

        # Unregistered and unconfigured workspaces resolve to nothing.
        await deliver_and_expect(kafka, prefix, providers, "999", None, "h")
        await accepted(admin, "register_workspace", workspace_id="102", partner_id="P", role="customer")
        await deliver_and_expect(kafka, prefix, providers, "102", None, "i")
        # A workspace cannot move to another partner without being unregistered first.
        r = await admin.run("register_workspace", workspace_id="101", partner_id="Q", role="customer")
        assert r["status"] == "rejected" and "registered to partner P" in r["reason"]
        await accepted(admin, "unregister_workspace", workspace_id="101")
        await deliver_and_expect(kafka, prefix, providers, "101", None, "j")


async def test_security_rejections_leave_the_settings_unchanged(env, worker_factory, kafka, prefix, s3):
    w = worker_factory({"STREAMER_ALLOW_PRIVATE_DESTINATIONS": "false", "STREAMER_COMMAND_MAX_AGE_S": "60"})
    w.wait_ready()
    key = __import__("base64").b64decode(SIGNING_KEY)
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="7", partner_id="P", role="customer")
        replayable = admin.command("put_workspace_config", workspace_id="7", config=s3_config(s3, "bucket-a"))
        replayable["config"]["destination"].pop("endpoint_url")  # no URL to check; signed again below
        replayable = signing.signed(replayable, "test-k1", key)
        assert (await admin.send(replayable))["status"] == "accepted"
        table_before = (await read_settings(kafka, prefix)).digest()
        worker_before = orjson.loads(w.get("/settings")[1])["digest"]
        assert table_before == worker_before

        def cmd(**over):
            body = admin.command("put_workspace_config", workspace_id="7",
                                 config=http_config_public(over.pop("url", "https://93.184.215.14/logs")))
            body.update(over)
            return body

        unsigned = cmd()
        del unsigned["signature"]
        tampered = cmd()
        tampered["workspace_id"] = "8"
        unknown_key = build_command("register_workspace", {"workspace_id": "9", "partner_id": "P", "role": "customer"},
                                    "mallory", "other-key", b"k" * 32)
        stale = build_command("register_workspace", {"workspace_id": "9", "partner_id": "P", "role": "customer"},
                              "admin", "test-k1", key, issued_at=datetime.now(timezone.utc) - timedelta(minutes=5))
        plaintext_secret = signing.signed({**cmd(), "config": {**cmd()["config"], "destination": {
            **cmd()["config"]["destination"], "secret_headers": {"Authorization": "Bearer plain"}}}}, "test-k1", key)
        foreign_envelope = signing.signed({**cmd(), "config": {**cmd()["config"], "destination": {
            **cmd()["config"]["destination"], "secret_headers": {"Authorization": {"enc": "v2:nokey:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}}}},
            "test-k1", key)
        cases = {
            "not signed": orjson.dumps(unsigned),
            "signature does not match": orjson.dumps(tampered),
            "unknown signing key id": orjson.dumps(unknown_key),
            "outside the allowed window": orjson.dumps(stale),
            "replay refused": orjson.dumps(replayable),
            "not valid JSON": b"{nope",
            "secret_headers.Authorization": orjson.dumps(plaintext_secret),
            "unknown key id 'nokey'": orjson.dumps(foreign_envelope),
            "scheme must be https": orjson.dumps(cmd(url="http://93.184.215.14/logs")),
            "loopback": orjson.dumps(cmd(url="https://127.0.0.1:8443/x")),
            "private": orjson.dumps(cmd(url="https://10.1.2.3/x")),
            "link-local": orjson.dumps(cmd(url="https://169.254.169.254/latest")),
            "must not carry credentials": orjson.dumps(cmd(url="https://user:pw@93.184.215.14/x")),
        }
        for expected, raw in cases.items():
            cid = orjson.loads(raw).get("command_id", "unknown") if raw.startswith(b"{\"") else "unknown"
            start = await admin._results_end()
            await admin.send_raw(raw)
            result = await admin.wait_result(cid, start)
            assert result["status"] == "rejected", (expected, result)
            assert expected.split("'")[0].lower() in result["reason"].lower() or expected in result["reason"], \
                (expected, result["reason"])
        # One more accepted command proves the worker is still processing after all of that.
        await accepted(admin, "register_workspace", workspace_id="10", partner_id="P", role="customer")
    after = await read_settings(kafka, prefix)
    assert after.digest() != table_before  # workspace 10 was added...
    assert "8" not in after.workspaces and "9" not in after.workspaces
    assert after.workspaces["7"].config.destination.bucket == "bucket-a"  # ...and nothing else changed
    assert orjson.loads(w.get("/settings")[1])["digest"] == after.digest()


def http_config_public(url: str) -> dict:
    return {"jobs": "status", "destination": {"type": "http", "provider": "generic", "url": url}}


def random_command(rng: random.Random, s3: str) -> tuple[str, dict]:
    ws = str(rng.randrange(40))
    partner = f"P{rng.randrange(5)}"
    kind = rng.choices(["register_workspace", "unregister_workspace", "put_workspace_config",
                        "delete_workspace_config", "put_partner_config", "delete_partner_config"],
                       weights=[4, 1, 4, 1, 2, 1])[0]
    config = {**s3_config(s3, f"b-{rng.randrange(1000)}"), "enabled": rng.random() < 0.8,
              "jobs": rng.choice(["off", "status", "details"])}
    fields = {"register_workspace": {"workspace_id": ws, "partner_id": partner, "role": rng.choice(["customer", "admin"])},
              "unregister_workspace": {"workspace_id": ws},
              "put_workspace_config": {"workspace_id": ws, "config": config},
              "delete_workspace_config": {"workspace_id": ws},
              "put_partner_config": {"partner_id": partner, "config": config},
              "delete_partner_config": {"partner_id": partner}}[kind]
    return kind, fields


def command_of(admin, rng, s3) -> dict:
    kind, fields = random_command(rng, s3)
    return admin.command(kind, **fields)


async def test_two_workers_agree_on_every_setting_after_500_random_commands(env, worker_factory, kafka, prefix, s3):
    workers = [worker_factory(name="w1"), worker_factory(name="w2")]
    for w in workers:
        w.wait_ready()
    rng = random.Random(42)
    async with admin_for(env) as admin:
        commands = [command_of(admin, rng, s3) for _ in range(500)]
        start = await admin._results_end()
        for c in commands:
            await admin.send_raw(orjson.dumps(c))
        last = await admin.wait_result(commands[-1]["command_id"], start, timeout=240)
        results = await consume(kafka, prefix + T.SETTINGS_RESULTS, 500)
        statuses = [orjson.loads(r.value)["status"] for r in results]
        assert len(statuses) == 500 and {"accepted", "rejected"} <= set(statuses)

        # Propagation: after each of 20 more commands' results, when is it in force on both workers?
        lags = []
        for _ in range(20):
            result = await admin.send(command_of(admin, rng, s3))
            t0 = time.monotonic()
            version = result["settings_version"]
            for w in workers:
                while orjson.loads(w.get("/settings")[1])["version"] < version:
                    assert time.monotonic() - t0 < 30, "a change never reached a worker"
                    await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t0)
    table = await read_settings(kafka, prefix)
    views = [orjson.loads(w.get("/settings")[1]) for w in workers]
    assert views[0]["digest"] == views[1]["digest"] == table.digest()
    assert views[0]["workspaces"] == len(table.workspaces) > 0
    lags.sort()
    print(f"\nsettings propagation after result, 20 commands: median {lags[10] * 1000:.0f} ms, "
          f"max {lags[-1] * 1000:.0f} ms; last of 500 was {last['status']}")


async def test_complete_recovery_of_10000_workspaces_after_restart(env, worker_factory, kafka, prefix, providers):
    cfg = orjson.dumps(http_config(providers, "generic", "late"))
    rows = []
    for i in range(10_000):
        ws = f"w{i}"
        rows.append((f"ws/{ws}".encode(), orjson.dumps({
            "registration": {"workspace_id": ws, "partner_id": f"p{i % 100}", "role": "customer", "external_id": None},
            "config": orjson.loads(cfg) if i == 9_999 else None,
            "command": {"id": f"seed-{i}", "offset": i, "issued_at": "2026-01-01T00:00:00+00:00", "actor": "seed"}})))
    await produce(kafka, prefix + T.SETTINGS_TABLE, rows)
    # An event of the workspace whose configuration is the very last row, waiting before any worker runs:
    # it is delivered only if the worker routes after reading the complete settings.
    await produce(kafka, prefix + SUMMARY, [(b"w9999", orjson.dumps(job_event("w9999", "j-first")))])
    w = worker_factory(name="first")
    w.wait_ready()
    ready = orjson.loads(w.get("/ready")[1])
    assert ready["settings_rows_recovered"] == 10_000
    assert [m["id"] for m in await providers.wait_items("late", 1)] == ["j-first"]
    view = orjson.loads(w.get("/settings")[1])
    assert view["workspaces"] == 10_000
    w.kill9()
    again = worker_factory(name="second")
    statuses = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code, body = again.get("/ready")
        statuses.add(code)
        if code == 200:
            # Ready means the whole table was read: never 200 with part of it.
            assert orjson.loads(body)["settings_rows_recovered"] == 10_000
            break
        await asyncio.sleep(0.05)
    # Not listening yet (0), then not ready (503) while recovering, then ready; nothing else.
    assert 200 in statuses and statuses <= {0, 503, 200}, statuses
    assert orjson.loads(again.get("/settings")[1])["digest"] == view["digest"]
    await produce(kafka, prefix + SUMMARY, [(b"w9999", orjson.dumps(job_event("w9999", "j-second")))])
    deadline = time.monotonic() + 60  # the killed worker's partitions move after the session timeout
    while "j-second" not in [m["id"] for m in providers.items("late")] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert "j-second" in [m["id"] for m in providers.items("late")]
    print(f"\nrecovery of 10,000 workspaces: {orjson.loads(again.get('/ready')[1])['recovery_seconds']:.2f}s; "
          f"readiness answers seen while starting: {sorted(statuses)}")


async def test_no_plaintext_secret_in_topics_logs_or_cli_output(env, worker_factory, kafka, prefix, providers, s3):
    from tests.providers import DD_API_KEY, SPLUNK_TOKEN
    from tests.support import make_bucket, s3_objects

    bucket = prefix.rstrip(".").lower() + "-sec"
    await make_bucket(s3, bucket)
    s3_secret = "S3secretVALUE-7f3a9c"
    header_secret = "Bearer hdr-SECRET-55aa"
    w = worker_factory()
    w.wait_ready()
    async with admin_for(env) as admin:
        for ws, cfg in (("1", http_config(providers, "datadog", "sec-dd")),
                        ("2", http_config(providers, "splunk", "sec-sp")),
                        ("3", http_config(providers, "generic", "sec-gen", secret_headers={"Authorization": header_secret})),
                        ("4", s3_config(s3, bucket, secret_access_key=s3_secret))):
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="P", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws, config=cfg)
    await produce(kafka, prefix + SUMMARY, [(ws.encode(), orjson.dumps(job_event(ws, f"j-{ws}"))) for ws in "1234"])
    for name in ("sec-dd", "sec-sp", "sec-gen"):
        await providers.wait_items(name, 1)
    assert len(await s3_objects(s3, bucket, 1)) == 1
    gen = [r for r in providers.received if r.name == "sec-gen"][0]
    assert gen.headers["Authorization"] == header_secret  # the secret was really used...
    cli = subprocess.run([sys.executable, "-m", "streamer", "settings", "list"], capture_output=True, text=True,
                         env={**__import__("os").environ, **env})
    assert cli.returncode == 0 and '"***"' in cli.stdout
    w.stop()
    blobs = [w.log().encode(), cli.stdout.encode()]
    for topic in (T.SETTINGS_COMMANDS, T.SETTINGS_RESULTS, T.SETTINGS_TABLE, T.DELIVERIES_HTTP, T.DELIVERIES_S3):
        for m in await consume(kafka, prefix + topic, 10_000, timeout=3):
            blobs.append((m.key or b"") + (m.value or b"") + b"".join(v for _, v in m.headers or ()))
    assert len(blobs) > 20
    for secret in (DD_API_KEY, SPLUNK_TOKEN, s3_secret, header_secret, "hdr-SECRET-55aa"):
        assert not any(secret.encode() in b for b in blobs), f"plaintext secret {secret!r} found"


def test_settings_cli_with_a_yaml_file(env, worker_factory, tmp_path, providers):
    import os

    w = worker_factory()
    w.wait_ready()
    cli_env = {**os.environ, **env}
    run = lambda *a: subprocess.run([sys.executable, "-m", "streamer", "settings", "--actor", "ops@example", *a],
                                    capture_output=True, text=True, env=cli_env, timeout=120)
    assert run("register", "--workspace", "31", "--partner", "P", "--role", "customer").returncode == 0
    cfg = tmp_path / "dd.yaml"
    cfg.write_text(f"jobs: details\nuser_activity: false\ndestination:\n  type: http\n  provider: datadog\n"
                   f"  url: {providers.url('datadog', 'cli')}\n  api_key: plain-dd-key-from-yaml\n  gzip: true\n")
    put = run("put-workspace", "--workspace", "31", "--file", str(cfg))
    assert put.returncode == 0, put.stdout + put.stderr
    assert orjson.loads(put.stdout)["status"] == "accepted"
    shown = run("get", "--workspace", "31")
    row = orjson.loads(shown.stdout)[0]
    assert row["config"]["destination"]["api_key"] == "***" and row["effective"] == "workspace:31"
    assert "plain-dd-key-from-yaml" not in shown.stdout + put.stdout
    # A rule violation exits 1 with the reason.
    wide = tmp_path / "wide.json"
    wide.write_text(orjson.dumps(http_config(providers, "generic", "wide")).decode())
    assert run("put-partner", "--partner", "P", "--file", str(wide)).returncode == 0
    rejected = run("put-workspace", "--workspace", "31", "--file", str(cfg))
    assert rejected.returncode == 1 and "partner-wide" in orjson.loads(rejected.stdout)["reason"]
    # Without a signing key nothing is sent.
    unsigned = subprocess.run([sys.executable, "-m", "streamer", "settings", "unregister", "--workspace", "31"],
                              capture_output=True, text=True, env={**cli_env, "STREAMER_SIGNING_KEYS": ""})
    assert unsigned.returncode == 2 and "STREAMER_SIGNING_KEYS" in unsigned.stderr

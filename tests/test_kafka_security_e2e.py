"""TLS and SASL, end to end, through a broker with a SASL_SSL listener and the StandardAuthorizer.

One broker for the module (`Kafka(secure=True)`, the same as `streamer dev up --secure`):
certificates from a throwaway CA, SCRAM users created at format time, and no ACL for
anyone but the super user `admin`. Each test grants the worker principal exactly
`streamer.acls.worker_acls` for its own topic prefix and group, so a worker that needed one
permission more would fail here, not in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import orjson
import pytest

from streamer import acls
from streamer.dev.local import DEV_ADMIN, DEV_WORKER, Kafka, free_port, make_ca
from streamer.topics_admin import apply_topics
from tests.support import WorkerProcess, accepted, admin_for, consume, http_config, job_event, produce, worker_env

SUMMARY = "audit.jobs.summary.v1"


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory):
    k = Kafka(tmp_path_factory.mktemp("kafka-secure"), free_port(), secure=True)
    k.start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
async def secure_topics(secure_kafka):
    """This test's topics (created by the super user) and the worker's grants on them."""
    prefix = f"s{uuid.uuid4().hex[:10]}."
    report = await apply_topics(secure_kafka.bootstrap, prefix, security=secure_kafka.admin_security())
    assert report.ok, report.drift
    await acls.grant(secure_kafka.bootstrap, f"User:{DEV_WORKER}", acls.worker_acls(prefix, f"app-{prefix.rstrip('.')}"),
                     secure_kafka.admin_security())
    return prefix


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`streamer ...` as an operator runs it; the timeout only keeps a hang from blocking the suite."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    return subprocess.run([sys.executable, "-m", "streamer", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


async def test_delivery_over_sasl_ssl_with_least_privilege(secure_kafka, secure_topics, s3, providers, tmp_path):
    """Worker over SASL_SSL (SCRAM-SHA-512, password from a mounted file) with only its ACLs:
    settings commands applied, events routed and delivered, a bad record rejected."""
    prefix, kafka = secure_topics, secure_kafka
    admin_sec = kafka.admin_security()
    password_file = tmp_path / "kafka-password"
    password_file.write_text(kafka.secure.password(DEV_WORKER) + "\n")
    worker_security = {**kafka.secure.client_env(DEV_WORKER), "STREAMER_SASL_PASSWORD": ""}
    worker_security["STREAMER_SASL_PASSWORD_FILE"] = str(password_file)
    env = {**worker_env(kafka.bootstrap, s3, prefix, tmp_path), **worker_security}
    worker = WorkerProcess(env, tmp_path / "worker")
    worker.start()
    try:
        worker.wait_ready(90)
        async with admin_for(env, admin_sec) as admin:
            await accepted(admin, "register_workspace", workspace_id="3101", partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id="3101",
                           config=http_config(providers, "generic", "secure", jobs="status"))
        events = [(b"3101", orjson.dumps(job_event(3101, f"j-{i}"))) for i in range(20)]
        await produce(kafka.bootstrap, prefix + SUMMARY, events + [(b"3101", b"not json")], security=admin_sec)
        got = await providers.wait_items("secure", 20, timeout=60)
        assert sorted(i["id"] for i in got) == sorted(f"j-{i}" for i in range(20))
        rejected = await consume(kafka.bootstrap, prefix + "audit.rejected.v1", 1, security=admin_sec)
        assert [r.value for r in rejected] == [b"not json"]
        assert "not authorized" not in worker.log().lower()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    # The worker principal really is limited: it may not create topics (or touch others').
    with pytest.raises(Exception, match="(?i)authoriz"):
        await apply_topics(kafka.bootstrap, f"o{uuid.uuid4().hex[:8]}.", security=kafka.secure.client(DEV_WORKER))


async def test_cli_refused_credentials_end_with_exit_2_and_the_reason(secure_kafka, secure_topics, tmp_path):
    """Wrong password / untrusted CA: exit 2 and one line naming the cause, not a traceback or
    a hang. The three mechanisms the listener offers all work with the right password."""
    kafka, prefix = secure_kafka, secure_topics
    base = {"STREAMER_BOOTSTRAP_SERVERS": kafka.bootstrap, "STREAMER_TOPIC_PREFIX": prefix}
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        ok = cli(["settings", "list"], {**base, **kafka.secure.client_env(DEV_ADMIN, mechanism)})
        assert ok.returncode == 0 and json.loads(ok.stdout) == [], (mechanism, ok.stderr)

    wrong = cli(["settings", "list"], {**base, **kafka.secure.client_env(DEV_ADMIN), "STREAMER_SASL_PASSWORD": "nope"})
    assert wrong.returncode == 2, wrong.stderr
    assert "authentication failed" in wrong.stderr and "Traceback" not in wrong.stderr
    assert "nope" not in wrong.stderr

    rogue = make_ca(tmp_path / "rogue")
    untrusted = cli(["topics", "apply"], {**base, **kafka.secure.client_env(DEV_ADMIN), "STREAMER_SSL_CAFILE": str(rogue)})
    assert untrusted.returncode == 2, untrusted.stderr
    assert "certificate is not trusted" in untrusted.stderr and "Traceback" not in untrusted.stderr

    plaintext = cli(["topics", "apply"], base)
    assert plaintext.returncode == 2 and "STREAMER_SECURITY_PROTOCOL" in plaintext.stderr, plaintext.stderr


async def test_worker_with_a_wrong_password_is_alive_but_not_ready(secure_kafka, secure_topics, s3, tmp_path):
    """Not a crash loop: /health 200, /ready 503 with the reason, the reason in the log, and
    SIGTERM still stops it at once."""
    kafka, prefix = secure_kafka, secure_topics
    env = {**worker_env(kafka.bootstrap, s3, prefix, tmp_path), **kafka.secure.client_env(DEV_WORKER),
           "STREAMER_SASL_PASSWORD": "wrong-password"}
    worker = WorkerProcess(env, tmp_path / "worker")
    worker.start()
    try:
        deadline = time.monotonic() + 60
        status, body = 0, b""
        while status != 503 and time.monotonic() < deadline and worker.proc.poll() is None:
            await asyncio.sleep(0.3)
            status, body = worker.get("/ready")
        assert status == 503, worker.log()[-3000:]
        assert "authentication failed" in json.loads(body)["kafka_error"]
        assert worker.get("/health")[0] == 200
        assert "authentication failed" in worker.log() and "wrong-password" not in worker.log()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_settings_from_the_environment_and_mounted_files(tmp_path):
    """No broker needed: the parsing every client relies on, and its refusals (exit 2 in the CLI)."""
    from streamer.kafka_client import KafkaConfigError, KafkaSecurity

    assert KafkaSecurity.from_env({}).aiokafka() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity.from_env({}).faust() == {}
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    sec = KafkaSecurity.from_env({"STREAMER_SECURITY_PROTOCOL": "sasl_plaintext", "STREAMER_SASL_USERNAME": "u",
                                  "STREAMER_SASL_PASSWORD_FILE": str(secret),
                                  "STREAMER_SASL_MECHANISM": "scram-sha-256"})
    assert sec.aiokafka() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                              "sasl_plain_username": "u", "sasl_plain_password": "s3cret"}
    assert "s3cret" not in sec.describe() and "s3cret" not in repr(sec.faust()["broker_credentials"])
    for env, message in (
        ({"STREAMER_SECURITY_PROTOCOL": "TLS"}, "use one of"),
        ({"STREAMER_SECURITY_PROTOCOL": "SASL_SSL", "STREAMER_SASL_USERNAME": "u"}, "STREAMER_SASL_PASSWORD"),
        ({"STREAMER_SECURITY_PROTOCOL": "SASL_SSL", "STREAMER_SASL_USERNAME": "u", "STREAMER_SASL_PASSWORD": "p",
          "STREAMER_SASL_MECHANISM": "GSSAPI"}, "STREAMER_SASL_MECHANISM"),
        ({"STREAMER_SASL_PASSWORD_FILE": str(tmp_path / "absent")}, "STREAMER_SASL_PASSWORD_FILE"),
        ({"STREAMER_SECURITY_PROTOCOL": "SSL", "STREAMER_SSL_CAFILE": str(tmp_path / "absent.pem")}, "no such file"),
        ({"STREAMER_SECURITY_PROTOCOL": "SSL", "STREAMER_SSL_KEYFILE": str(secret)}, "STREAMER_SSL_CERTFILE"),
    ):
        with pytest.raises(KafkaConfigError, match=message):
            KafkaSecurity.from_env(env)

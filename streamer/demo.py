"""`streamer demo`: the main job on a local default, from nothing to delivered events.

Starts Kafka and S3 (streamer dev up), creates the topics, starts a local log receiver
and one worker, registers two sample partners (one partner-wide to S3, one customer to a
Datadog-style REST destination), produces the sample events and shows what arrived where.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from streamer.dev.local import _port_open, free_port, services, state_dir, up
from streamer.dev.receiver import Receiver

TOPIC_OF = {"job_summary": "audit.jobs.summary.v1", "job_details": "audit.jobs.details.v1",
            "user_activity": "audit.user_activity.v1"}


def _kind(body: dict) -> str:
    if "team" in body and "event" in body:
        return "user_activity"
    return "job_details" if "lines" in body else "job_summary"


def _workspace(body: dict) -> str:
    return str(body["team"]["id"] if "team" in body else body["context"]["user_id"])


def _keys(root: Path) -> dict[str, str]:
    """Development keys, made once and kept beside the local services (never for production)."""
    path = root / "dev-keys.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(orjson.dumps({
            "STREAMER_SIGNING_KEYS": "dev-sign-1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "STREAMER_ENCRYPTION_KEYS": "dev-enc-1:" + base64.b64encode(secrets.token_bytes(32)).decode()}).decode())
        path.chmod(0o600)
    return orjson.loads(path.read_text())


def run_demo(samples_dir: str | None, keep_running: bool, use_running: bool = False,
             receiver_url: str | None = None, bucket: str = "audit-demo") -> int:
    samples = Path(samples_dir or os.environ.get("STREAMER_SAMPLES_DIR") or Path.cwd().parent / "shared" / "samples")
    files = sorted(samples.glob("*.json"))
    if not files:
        print(f"error: no sample events in {samples} (pass --samples DIR)", file=sys.stderr)
        return 2
    if use_running:
        # docker compose: Kafka, S3, the workers and a receiver already run; seed settings and events.
        from streamer.config import Config

        cfg = Config.from_env()
        return asyncio.run(seed(cfg.bootstrap_servers, cfg.s3_endpoint_url, receiver_url or "http://log-receiver:8080",
                                bucket, files))
    root = state_dir()
    kafka, s3 = services(9092, 5000, root)
    # Our own services from an earlier run are reused; a port taken by something else is not.
    if kafka.pid() is None and _port_open(kafka.port):
        kafka.port = free_port()
    if s3.pid() is None and _port_open(s3.port):
        s3.port = free_port()
    if up(kafka, s3):
        return 1
    env = {**os.environ, **_keys(root), "STREAMER_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "STREAMER_TOPIC_PREFIX": "", "STREAMER_APP_ID": "streamer-demo", "STREAMER_S3_ENDPOINT_URL": s3.endpoint,
           "STREAMER_ALLOW_PRIVATE_DESTINATIONS": "true", "STREAMER_WEB_PORT": str(free_port()),
           "STREAMER_DATA_DIR": str(root / "worker"), "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    return asyncio.run(_demo(kafka.bootstrap, s3.endpoint, env, files, root, keep_running))


async def _demo(bootstrap: str, s3_endpoint: str, env: dict, files: list[Path], root: Path, keep: bool) -> int:
    from aiobotocore.session import get_session

    from streamer.topics_admin import apply_topics

    report = await apply_topics(bootstrap)
    print(f"topics: {len(report.created)} created, {len(report.unchanged)} already there"
          + ("".join(f"\n  DRIFT {d}" for d in report.drift)))
    receiver = Receiver()
    await receiver.start()
    print(f"log receiver listening on http://127.0.0.1:{receiver.port}")
    log = open(root / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "streamer", "worker"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    print(f"worker pid {worker.pid}, web http://127.0.0.1:{env['STREAMER_WEB_PORT']}/ready, log {root / 'worker.log'}")
    bucket = "audit-demo"
    session = get_session()
    try:
        async with session.create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1") as s3c:
            try:
                await s3c.create_bucket(Bucket=bucket)
            except s3c.exceptions.BucketAlreadyOwnedByYou:
                pass
        await seed(bootstrap, s3_endpoint, f"http://127.0.0.1:{receiver.port}", bucket, files)
        # 5234's two events go to S3; 78125's details and login go to the receiver (summaries not selected).
        deadline = time.monotonic() + 60
        keys: list[str] = []
        while time.monotonic() < deadline:
            async with session.create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1") as s3c:
                keys = [o["Key"] for o in (await s3c.list_objects_v2(Bucket=bucket)).get("Contents", [])]
            if len(keys) >= 2 and len(receiver.received) >= 2:
                break
            await asyncio.sleep(0.5)
        print(f"\ns3://{bucket}/ ({len(keys)} objects)")
        for k in keys:
            print(f"  {k}")
        print(f"\nlog receiver ({len(receiver.received)} messages)")
        for path, item in receiver.received:
            entry = item.get("logEntries", item) if isinstance(item, dict) else item
            label = entry.get("event") or f"job {entry.get('id')} {entry.get('status')}" if isinstance(entry, dict) else entry
            print(f"  POST {path}: {label}")
        ok = len(keys) >= 2 and len(receiver.received) >= 2
        if keep:
            print("\nrunning; Ctrl-C to stop (Kafka and S3 keep running: `streamer dev down`)")
            await asyncio.Event().wait()
        return 0 if ok else 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        await receiver.stop()
        if not keep:
            print("worker stopped; Kafka and S3 are still up (`bash scripts/dev.sh down` stops them)")


async def seed(bootstrap: str, s3_endpoint: str | None, receiver_url: str, bucket: str, files: list[Path]) -> int:
    """Register the two sample partners and produce the sample events."""
    from aiokafka import AIOKafkaProducer

    from streamer.admin import AdminClient
    from streamer.config import Config

    cfg = Config.from_env()
    async with AdminClient(bootstrap, cfg.topic_prefix, cfg.signing_keys, cfg.encryption_keys, actor="demo") as admin:
        steps = [
            ("register_workspace", dict(workspace_id="5234", partner_id="northwind-partner", role="customer")),
            ("register_workspace", dict(workspace_id="5000", partner_id="northwind-partner", role="admin")),
            ("put_partner_config", dict(partner_id="northwind-partner", config={
                "jobs": "status", "user_activity": True,
                "destination": {"type": "s3", "bucket": bucket, "prefix": "audit", "endpoint_url": s3_endpoint}})),
            ("register_workspace", dict(workspace_id="78125", partner_id="acme-partner", role="customer",
                                        external_id="acme-freight-eu")),
            ("put_workspace_config", dict(workspace_id="78125", config={
                "jobs": "details", "user_activity": True,
                "template": '{"source": "workato", "environment": "demo", "logEntries": {{log_message}}}',
                "destination": {"type": "http", "provider": "datadog", "url": receiver_url,
                                "api_key": "demo-datadog-key", "ddtags": "env:demo"}})),
        ]
        for kind, fields in steps:
            result = await admin.run(kind, timeout=90, **fields)
            print(f"settings {kind:22} {fields.get('workspace_id') or fields.get('partner_id'):18} -> "
                  f"{result['status']}{': ' + (result.get('reason') or result.get('warning') or '') if result['status'] != 'accepted' else ''}")
    from streamer.kafka_client import client_kwargs

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_kwargs())
    await producer.start()
    for f in files:
        body = orjson.loads(f.read_bytes())
        await producer.send_and_wait(cfg.topic(TOPIC_OF[_kind(body)]), f.read_bytes(), key=_workspace(body).encode())
        print(f"produced {f.name} to {TOPIC_OF[_kind(body)]}")
    await producer.stop()
    return 0

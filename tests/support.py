"""Helpers shared by the tests: signing keys, a worker subprocess, Kafka produce/consume."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamer.dev.local import free_port

SIGNING_KEY = base64.b64encode(b"s" * 32).decode()
ENCRYPTION_KEY = base64.b64encode(b"e" * 32).decode()


def worker_env(bootstrap: str, s3: str, prefix: str, tmp: Path) -> dict[str, str]:
    return {
        "STREAMER_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMER_TOPIC_PREFIX": prefix,
        "STREAMER_APP_ID": f"app-{prefix.rstrip('.')}",
        "STREAMER_SIGNING_KEYS": f"test-k1:{SIGNING_KEY}",
        "STREAMER_ENCRYPTION_KEYS": f"test-e1:{ENCRYPTION_KEY}",
        "STREAMER_ALLOW_PRIVATE_DESTINATIONS": "true",
        "STREAMER_S3_ENDPOINT_URL": s3,
        "STREAMER_BATCH_LINGER_S": "0.1",
        "STREAMER_DATA_DIR": str(tmp / "data"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


class WorkerProcess:
    """A real `streamer worker` subprocess, as an SRE would run it."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env = {**os.environ, **env}
        self.port = free_port()
        self.env["STREAMER_WEB_PORT"] = str(self.port)
        self.env["STREAMER_DATA_DIR"] = str(workdir / "data")
        self.workdir = workdir
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamer", "worker"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.get("/ready")[0] == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
                  headers: list | None = None) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=60 * 1024 * 1024, linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, value=v, key=k, headers=headers) for k, v in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0,
                  predicate=None) -> list:
    """Read `topic` from the beginning until `count` records (matching predicate) or timeout."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         group_id=None, enable_auto_commit=False, fetch_max_bytes=60 * 1024 * 1024,
                         max_partition_fetch_bytes=60 * 1024 * 1024)
    await c.start()
    out = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(m for m in msgs if predicate is None or predicate(m))
    finally:
        await c.stop()
    return out


def jloads(b: bytes):
    return orjson.loads(b)


def uid() -> str:
    return uuid.uuid4().hex[:12]


# -- settings and destinations -------------------------------------------------------------------

def admin_for(env: dict):
    from streamer.admin import AdminClient
    from streamer.config import parse_keyring

    return AdminClient(env["STREAMER_BOOTSTRAP_SERVERS"], env["STREAMER_TOPIC_PREFIX"],
                       parse_keyring(env["STREAMER_SIGNING_KEYS"]), parse_keyring(env["STREAMER_ENCRYPTION_KEYS"]))


def http_config(providers, provider: str, name: str, jobs: str = "status", user_activity: bool = True,
                template: str | None = None, **dest) -> dict:
    from tests.providers import DD_API_KEY, SPLUNK_TOKEN

    destination = {"type": "http", "provider": provider, "url": providers.url(provider, name), **dest}
    if provider == "datadog":
        destination.setdefault("api_key", DD_API_KEY)
    if provider == "splunk":
        destination.setdefault("token", SPLUNK_TOKEN)
    config = {"jobs": jobs, "user_activity": user_activity, "destination": destination}
    if template is not None:
        config["template"] = template
    return config


def s3_config(endpoint: str, bucket: str, jobs: str = "status", user_activity: bool = True, **dest) -> dict:
    return {"jobs": jobs, "user_activity": user_activity,
            "destination": {"type": "s3", "bucket": bucket, "endpoint_url": endpoint,
                            "access_key_id": "testing", "secret_access_key": "testing", **dest}}


async def accepted(admin, kind: str, **fields) -> dict:
    result = await admin.run(kind, **fields)
    assert result["status"] in ("accepted", "accepted_with_warning"), result
    return result


async def make_bucket(endpoint: str, bucket: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket=bucket)


async def s3_objects(endpoint: str, bucket: str, expect: int, timeout: float = 30) -> dict[str, tuple[bytes, str]]:
    """{key: (body, content type)} once `expect` objects exist (or at timeout)."""
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        deadline = time.monotonic() + timeout
        while True:
            listing = await s3.list_objects_v2(Bucket=bucket)
            keys = [o["Key"] for o in listing.get("Contents", [])]
            if len(keys) >= expect or time.monotonic() > deadline:
                out = {}
                for k in keys:
                    obj = await s3.get_object(Bucket=bucket, Key=k)
                    out[k] = (await obj["Body"].read(), obj["ContentType"])
                return out
            await asyncio.sleep(0.3)


def job_event(workspace: str | int, job_id: str | int, recipe_id: int = 1, status: str = "succeeded",
              pad: int = 0, **extra) -> dict:
    ws = int(workspace) if str(workspace).isdigit() else workspace
    body = {"id": job_id, "recipe_id": recipe_id, "status": status, "title": "t" * pad,
            "started_at": "2026-03-14T09:29:58-07:00", "completed_at": "2026-03-14T09:30:02-07:00",
            "account_id": ws, "context": {"user_id": ws, "user_external_id": None, "recipe_id": recipe_id,
                                          "job_id": job_id}}
    body.update(extra)
    return body


def activity_event(workspace: str | int, event_id: str, event: str = "user_login") -> dict:
    ws = int(workspace) if str(workspace).isdigit() else workspace
    return {"id": event_id, "event": event, "timestamp": "2026-03-14 16:31:07 UTC",
            "user": {"id": 1, "external_id": None}, "team": {"id": ws, "external_id": None}}


def workspace_of(message: dict) -> str:
    if "team" in message:
        return str(message["team"]["id"])
    return str(message["context"]["user_id"])

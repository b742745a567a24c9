"""Helpers shared by the tests: Kafka produce/consume, settings and event builders.

The worker subprocess, its environment and the development keys live in
streamer/dev/harness.py (the benchmark uses them too) and are re-exported here.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamer.dev.harness import ENCRYPTION_KEY, SIGNING_KEY, WorkerProcess, make_bucket, worker_env
from streamer.kafka_client import client_kwargs

__all__ = ["ENCRYPTION_KEY", "SIGNING_KEY", "WorkerProcess", "make_bucket", "worker_env"]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
                  headers: list | None = None, security=None) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=60 * 1024 * 1024, linger_ms=5,
                         **client_kwargs(security))
    await p.start()
    try:
        futs = [await p.send(topic, value=v, key=k, headers=headers) for k, v in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0,
                  predicate=None, stop=None, security=None) -> list:
    """Read `topic` from the beginning until `count` records (matching predicate), or until
    `stop(records so far)` is true, or timeout."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         group_id=None, enable_auto_commit=False, fetch_max_bytes=60 * 1024 * 1024,
                         max_partition_fetch_bytes=60 * 1024 * 1024, **client_kwargs(security))
    await c.start()
    out = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline and not (stop and stop(out)):
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

def admin_for(env: dict, security=None):
    from streamer.admin import AdminClient
    from streamer.config import parse_keyring

    return AdminClient(env["STREAMER_BOOTSTRAP_SERVERS"], env["STREAMER_TOPIC_PREFIX"],
                       parse_keyring(env["STREAMER_SIGNING_KEYS"]), parse_keyring(env["STREAMER_ENCRYPTION_KEYS"]),
                       security=security,
                       allow_private_destinations=env.get("STREAMER_ALLOW_PRIVATE_DESTINATIONS") == "true")


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


async def serve(app) -> tuple:
    """(runner, base URL) of an aiohttp app on a free loopback port; `runner.cleanup()` stops it."""
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=1.0)  # no 60 s wait for a hanging handler
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

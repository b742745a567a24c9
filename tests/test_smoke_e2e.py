"""Smoke: one worker, a partner-wide S3 configuration, sample events arrive as objects."""

from __future__ import annotations

import asyncio

import orjson
from aiobotocore.session import get_session

from streamer.admin import AdminClient
from streamer.config import parse_keyring
from tests.support import ENCRYPTION_KEY, SIGNING_KEY, produce


def admin_for(env: dict) -> AdminClient:
    return AdminClient(env["STREAMER_BOOTSTRAP_SERVERS"], env["STREAMER_TOPIC_PREFIX"],
                       parse_keyring(env["STREAMER_SIGNING_KEYS"]), parse_keyring(env["STREAMER_ENCRYPTION_KEYS"]))


async def s3_objects(endpoint: str, bucket: str, expect: int, timeout: float = 30) -> dict[str, bytes]:
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                     aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            listing = await s3.list_objects_v2(Bucket=bucket)
            keys = [o["Key"] for o in listing.get("Contents", [])]
            if len(keys) >= expect or asyncio.get_running_loop().time() > deadline:
                out = {}
                for k in keys:
                    obj = await s3.get_object(Bucket=bucket, Key=k)
                    out[k] = await obj["Body"].read()
                    out[k + "#ct"] = obj["ContentType"].encode()
                return out
            await asyncio.sleep(0.3)


async def make_bucket(endpoint: str, bucket: str) -> None:
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket=bucket)


async def test_sample_events_land_in_s3(env, worker_factory, samples, s3, kafka, prefix):
    bucket = prefix.rstrip(".").lower() + "-b"
    await make_bucket(s3, bucket)
    w = worker_factory()
    w.wait_ready()
    async with admin_for(env) as admin:
        r = await admin.run("register_workspace", workspace_id="5234", partner_id="p1", role="customer")
        assert r["status"] == "accepted", r
        r = await admin.run("put_partner_config", partner_id="p1", config={
            "jobs": "status", "user_activity": True,
            "destination": {"type": "s3", "bucket": bucket, "endpoint_url": s3,
                            "access_key_id": "testing", "secret_access_key": "testing"}})
        assert r["status"] == "accepted", r
    await produce(kafka, prefix + "audit.jobs.summary.v1", [(b"5234", samples["job_summary_failed_numeric_id"])])
    await produce(kafka, prefix + "audit.user_activity.v1", [(b"5234", samples["user_activity_recipe_renamed_no_id"])])
    objs = await s3_objects(s3, bucket, 2)
    key = "5234/jobs/234/20180521/000/000/000/000/000/000/100/5234-234-100-20180521000000-failed.json"
    assert key in objs, list(objs)
    assert orjson.loads(objs[key]) == orjson.loads(samples["job_summary_failed_numeric_id"])
    assert objs[key + "#ct"] == b"application/json"

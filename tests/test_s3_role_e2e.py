"""S3 with an assumed role and server-side encryption, against moto's STS and S3.

The sink's own credential path is checked first (no broker): the role is assumed with the
destination's keys through STS, and what it signs with are the role's temporary keys.
Then end to end: a worker delivers through an assumed role with SSE-KMS, a storage class
and the bucket-owner ACL, and the objects carry them.
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson
from aiobotocore.session import get_session

from streamer import topics as T
from streamer.settings.secrets import encrypt
from streamer.sinks.s3.service import S3Sink
from tests.support import accepted, admin_for, job_event, make_bucket, produce

ROLE = "arn:aws:iam::123456789012:role/streamer-writer"


async def test_the_role_is_assumed_with_the_destinations_keys(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3)
    keys = {"k1": os.urandom(32)}
    sink = S3Sink(keys, s3, 4, 5.0, allow_private=True)
    try:
        dest = {"bucket": "any-bucket", "region": "eu-west-1", "access_key_id": "testing",
                "secret_access_key": {"enc": encrypt("testing", keys, "partner/p", "destination.secret_access_key")}, "role_arn": ROLE,
                "external_id": "acme-freight-eu", "role_session_name": "streamer-test"}
        target = await sink._target(dest, "partner/p")
        frozen = await sink._credentials(target)
        assert frozen.access_key != "testing" and frozen.token  # temporary keys of the role
        assert (await sink._credentials(target)).access_key == frozen.access_key  # cached until near expiry
    finally:
        await sink.close()


async def test_assumed_role_with_sse_kms_storage_class_and_acl(env, worker_factory, s3, kafka, prefix):
    bucket = prefix.rstrip(".").lower() + "-role"
    await make_bucket(s3, bucket)
    w = worker_factory({"AWS_ENDPOINT_URL_STS": s3})
    w.wait_ready()
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="r1", partner_id="rp", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id="r1", config={"destination": {
            "type": "s3", "bucket": bucket, "endpoint_url": s3, "access_key_id": "testing",
            "secret_access_key": "testing", "role_arn": ROLE, "external_id": "acme-freight-eu",
            "server_side_encryption": "aws:kms", "kms_key_id": "alias/audit", "storage_class": "STANDARD_IA",
            "acl": "bucket-owner-full-control"}})
    await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"r1", orjson.dumps(job_event("r1", f"j-r{i}"))) for i in range(3)])
    async with get_session().create_client("s3", endpoint_url=s3, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as client:
        deadline = time.monotonic() + 60
        keys: list[str] = []
        while len(keys) < 3 and time.monotonic() < deadline:
            keys = [o["Key"] for o in (await client.list_objects_v2(Bucket=bucket)).get("Contents", [])]
            await asyncio.sleep(0.3)
        assert len(keys) == 3
        for key in keys:
            head = await client.head_object(Bucket=bucket, Key=key)
            assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("alias/audit")
            assert head["StorageClass"] == "STANDARD_IA" and head["ContentType"] == "application/json"

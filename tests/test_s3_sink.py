"""The S3 sink: request building (pure), the adaptive cap (pure), and the sink against real
moto servers: the session's (no auth) and one of its own that checks signatures and IAM
permissions, for wrong credentials, missing permissions and refreshed credentials."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from aiobotocore.credentials import AioRefreshableCredentials
from aiobotocore.session import get_session
from botocore.credentials import Credentials

from streamer.dev.harness import make_bucket
from streamer.dev.local import MotoS3, free_port
from streamer.settings.secrets import encrypt
from streamer.sinks.adaptive import AdaptiveLimit, Aimd
from streamer.sinks.base import Delivery
from streamer.sinks.s3.request import (CONTENT_TYPE, classify, error_code, object_base_url, object_url,
                                       signed_headers)
from streamer.sinks.s3.service import S3Sink

KEYS = {"k1": os.urandom(32)}


# -- request building (pure) ------------------------------------------------------------------

def test_object_urls_follow_botocores_endpoint_rules():
    # IP and custom endpoints: path-style, as aiobotocore addressed them (moto, MinIO).
    assert object_base_url("us-east-1", "http://127.0.0.1:5000", "bkt") == "http://127.0.0.1:5000/bkt/"
    assert object_base_url("eu-west-1", "http://minio:9000", "bkt") == "http://minio:9000/bkt/"
    # AWS: virtual-host in the bucket's region; a dotted bucket falls back to path-style (TLS).
    assert object_base_url("eu-west-1", None, "bkt") == "https://bkt.s3.eu-west-1.amazonaws.com/"
    assert object_base_url("eu-west-1", None, "my.dotted.bucket") == \
        "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/"


def test_object_keys_are_encoded_as_botocore_encodes_them():
    base = "http://127.0.0.1:5000/bkt/"
    key = "audit/78125/jobs/1/20260314/000/a-b.json"
    assert object_url(base, key) == base + key
    assert object_url(base, "p q/ü+~=.json") == base + "p%20q/%C3%BC%2B~%3D.json"


def test_signature_covers_the_body_the_type_and_the_session_token():
    creds = Credentials("AKIDEXAMPLE", "secret", "session-token").get_frozen_credentials()
    h = signed_headers("https://bkt.s3.eu-west-1.amazonaws.com/k.json", b"{}", creds, "eu-west-1")
    assert h["Content-Type"] == CONTENT_TYPE
    assert h["X-Amz-Security-Token"] == "session-token"
    assert h["X-Amz-Content-SHA256"] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert h["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/s3/aws4_request" in h["Authorization"]
    assert "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token" in h["Authorization"]


def _xml(code: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m {code}</Message></Error>".encode()


@pytest.mark.parametrize("status, code, retryable", [
    (404, "NoSuchBucket", False), (403, "AccessDenied", False), (403, "InvalidAccessKeyId", False),
    (403, "SignatureDoesNotMatch", False), (400, "AuthorizationHeaderMalformed", False),
    (400, "InvalidBucketName", False), (403, "AllAccessDisabled", False),
    (503, "SlowDown", True), (500, "InternalError", True), (400, "RequestTimeout", True),
    (429, "", True), (408, "", True), (400, "EntityTooLarge", False), (403, "RequestTimeTooSkewed", False),
    (301, "PermanentRedirect", False),
    # A fatal code stays fatal even with a retryable status.
    (500, "AccessDenied", False),
])
def test_error_classification_is_the_aiobotocore_sinks(status, code, retryable):
    outcome = classify(status, _xml(code) if code else b"")
    assert not outcome.ok and outcome.retryable is retryable
    assert outcome.error == (f"s3 {code}: m {code}" if code else f"s3 {status}: ")


def test_success_and_odd_error_bodies():
    assert classify(200, b"").ok
    assert error_code(b"<html>bad gateway</html>") == ("", "")
    assert error_code(b"not xml at all") == ("", "not xml at all")
    assert classify(502, b"not xml").retryable


# -- adaptive cap (pure) -----------------------------------------------------------------------

def test_aimd_grows_by_one_per_window_and_halves_once_per_window():
    a = Aimd(initial=8, maximum=32)
    for _ in range(8):
        a.success()
    assert a.allowed in (8, 9)  # about one more per window of `limit` successes
    for _ in range(1000):
        a.success()
    assert a.allowed == 32  # never above the maximum
    epoch = a.epoch
    a.overload(epoch)
    a.overload(epoch)  # the same window's other failures do not halve again
    assert a.allowed == 16
    a.overload(a.epoch)
    assert a.allowed == 8
    for _ in range(20):
        a.overload(a.epoch)
    assert a.allowed == 1  # never below one


async def test_the_gate_admits_the_allowed_number_and_wakes_waiters_in_order():
    gate = AdaptiveLimit(initial=2, maximum=4)
    e1, e2 = await gate.acquire(), await gate.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        epoch = await gate.acquire()
        order.append(i)
        gate.release(epoch, ok=True, overload=False)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert gate.in_flight == 2 and order == []
    gate.release(e1, ok=False, overload=True)  # halves to 1: still full
    await asyncio.sleep(0)
    assert order == []
    gate.release(e2, ok=True, overload=False)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and gate.in_flight == 0


# -- the sink against the session's moto --------------------------------------------------------

def _destination(endpoint: str, bucket: str, key_id: str = "testing", secret: str = "testing", **extra) -> dict:
    return {"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "access_key_id": key_id,
            "secret_access_key": {"enc": encrypt(secret, KEYS, "partner/p", "destination.secret_access_key")}, **extra}


def _deliveries(n: int, prefix: str = "audit/") -> list[Delivery]:
    return [Delivery(destination_id="partner:p", destination=b"{}", workspace_id="78125", event_id=f"e{i}",
                     kind="job_summary", message=b'{"id": %d}' % i, object_key=f"{prefix}78125/jobs/1/x y+{i}.json")
            for i in range(n)]


async def _objects(endpoint: str, bucket: str, key_id="testing", secret="testing") -> dict[str, tuple[bytes, str]]:
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id=key_id, aws_secret_access_key=secret) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket)
        out = {}
        for o in listing.get("Contents", []):
            obj = await s3.get_object(Bucket=bucket, Key=o["Key"])
            out[o["Key"]] = (await obj["Body"].read(), obj["ContentType"])
        return out


async def test_objects_land_at_their_keys_with_their_bytes_and_type(s3):
    bucket = f"sink-{uuid.uuid4().hex[:10]}"
    await make_bucket(s3, bucket)
    sink = S3Sink(KEYS, None, 32, 10, allow_private=True)
    try:
        items = _deliveries(60)
        outcomes = await sink.send(_destination(s3, bucket), items)
        assert all(o.ok for o in outcomes)
        assert (await sink.send(_destination(s3, bucket), items[:1]))[0].ok  # the single-object path
    finally:
        await sink.close()
    objects = await _objects(s3, bucket)
    assert objects == {d.object_key: (d.message, "application/json") for d in items}


async def test_the_default_endpoint_is_used_when_the_destination_has_none(s3):
    bucket = f"sink-{uuid.uuid4().hex[:10]}"
    await make_bucket(s3, bucket)
    sink = S3Sink(KEYS, s3, 32, 10, allow_private=True)
    try:
        dest = _destination(s3, bucket)
        del dest["endpoint_url"]
        assert all(o.ok for o in await sink.send(dest, _deliveries(2)))
    finally:
        await sink.close()
    assert len(await _objects(s3, bucket)) == 2


async def test_a_missing_bucket_is_permanent(s3):
    sink = S3Sink(KEYS, None, 32, 10, allow_private=True)
    try:
        outcomes = await sink.send(_destination(s3, f"missing-{uuid.uuid4().hex[:8]}"), _deliveries(3))
    finally:
        await sink.close()
    assert all(not o.ok and not o.retryable and o.error.startswith("s3 NoSuchBucket") for o in outcomes)


async def test_nothing_listening_and_no_answer_are_retryable():
    sink = S3Sink(KEYS, None, 32, 0.5, allow_private=True)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    try:
        refused = await sink.send(_destination(f"http://127.0.0.1:{free_port()}", "bkt-x"), _deliveries(2))
        hanging = await sink.send(_destination(f"http://127.0.0.1:{silent.getsockname()[1]}", "bkt-y"),
                                  _deliveries(1))
    finally:
        silent.close()
        await sink.close()
    assert all(not o.ok and o.retryable and o.error.startswith("s3 connection:") for o in refused + hanging)
    assert "Timeout" in hanging[0].error


# -- against a moto that checks signatures and IAM permissions -----------------------------------

ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _trust(principal_arn: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": principal_arn}, "Action": "sts:AssumeRole"}]})


@pytest.fixture(scope="module")
async def authed(tmp_path_factory):
    """A moto server of its own with auth on: an admin user, a user without permissions, a
    role the admin may assume, and a bucket. Auth is switched on (moto's reset-auth) only
    after they exist."""
    m = MotoS3(tmp_path_factory.mktemp("s3auth"), free_port())
    m.start()
    try:
        ep = m.endpoint
        session = get_session()
        users, arns = {}, {}
        async with session.create_client("iam", endpoint_url=ep, region_name="us-east-1",
                                         aws_access_key_id="testing", aws_secret_access_key="testing") as iam:
            for name, policy in (("admin", ALLOW_ALL), ("nobody", None)):
                arns[name] = (await iam.create_user(UserName=name))["User"]["Arn"]
                if policy:
                    await iam.put_user_policy(UserName=name, PolicyName="all", PolicyDocument=policy)
                key = (await iam.create_access_key(UserName=name))["AccessKey"]
                users[name] = (key["AccessKeyId"], key["SecretAccessKey"])
            role = await iam.create_role(RoleName="writer", AssumeRolePolicyDocument=_trust(arns["admin"]))
            await iam.put_role_policy(RoleName="writer", PolicyName="all", PolicyDocument=ALLOW_ALL)
        bucket = "authed-bucket"
        await make_bucket(ep, bucket)
        req = urllib.request.Request(ep + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        yield {"endpoint": ep, "users": users, "role_arn": role["Role"]["Arn"], "bucket": bucket}
    finally:
        m.stop()


async def test_signed_requests_are_accepted_by_a_signature_checking_store(authed):
    ak, sk = authed["users"]["admin"]
    sink = S3Sink(KEYS, None, 32, 10, allow_private=True)
    try:
        items = _deliveries(5, prefix="own/")
        assert all(o.ok for o in await sink.send(_destination(authed["endpoint"], authed["bucket"], ak, sk), items))
    finally:
        await sink.close()
    objects = await _objects(authed["endpoint"], authed["bucket"], ak, sk)
    assert {k: v for k, v in objects.items() if k.startswith("own/")} == \
        {d.object_key: (d.message, "application/json") for d in items}


@pytest.mark.parametrize("who, code", [("unknown key", "InvalidAccessKeyId"), ("wrong secret", "SignatureDoesNotMatch"),
                                       ("no permission", "AccessDenied")])
async def test_wrong_credentials_are_permanent(authed, who, code):
    admin_key, _ = authed["users"]["admin"]
    key_id, secret = {"unknown key": ("AKIAUNKNOWNUNKNOWN00", "x"), "wrong secret": (admin_key, "not-the-secret"),
                      "no permission": authed["users"]["nobody"]}[who]
    sink = S3Sink(KEYS, None, 32, 10, allow_private=True)
    try:
        outcomes = await sink.send(_destination(authed["endpoint"], authed["bucket"], key_id, secret), _deliveries(2))
    finally:
        await sink.close()
    assert all(not o.ok and not o.retryable and o.error.startswith(f"s3 {code}") for o in outcomes), outcomes


async def test_without_own_keys_the_default_chain_is_used(authed, monkeypatch):
    ak, sk = authed["users"]["admin"]
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ak)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sk)
    dest = {"type": "s3", "bucket": authed["bucket"], "endpoint_url": authed["endpoint"], "prefix": "chain"}
    sink = S3Sink(KEYS, None, 32, 10, allow_private=True)
    try:
        assert all(o.ok for o in await sink.send(dest, _deliveries(2, prefix="chain/")))
    finally:
        await sink.close()


async def test_assumed_role_credentials_are_refreshed_before_they_are_used(authed):
    """Credentials from STS AssumeRole that expire: the sink signs each PUT with frozen
    credentials that botocore refreshed, never with the expired ones."""
    admin_key, admin_secret = authed["users"]["admin"]
    issued: list[str] = []

    async def assume_role() -> dict:
        async with get_session().create_client("sts", endpoint_url=authed["endpoint"], region_name="us-east-1",
                                               aws_access_key_id=admin_key,
                                               aws_secret_access_key=admin_secret) as sts:
            got = await sts.assume_role(RoleArn=authed["role_arn"], RoleSessionName=f"streamer-{len(issued)}")
        c = got["Credentials"]
        issued.append(c["AccessKeyId"])
        # Inside botocore's mandatory refresh window: the next use refreshes again.
        expiry = datetime.now(timezone.utc) + timedelta(minutes=5)
        return {"access_key": c["AccessKeyId"], "secret_key": c["SecretAccessKey"], "token": c["SessionToken"],
                "expiry_time": expiry.isoformat()}

    expired = {"access_key": "ASIAEXPIREDEXPIRED00", "secret_key": "expired", "token": "expired",
               "expiry_time": (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()}
    creds = AioRefreshableCredentials.create_from_metadata(expired, assume_role, "assume-role")
    dest = {"type": "s3", "bucket": authed["bucket"], "endpoint_url": authed["endpoint"]}
    sink = S3Sink(KEYS, None, 32, 10, default_credentials=creds, allow_private=True)
    try:
        first = await sink.send(dest, _deliveries(1, prefix="role-a/"))
        second = await sink.send(dest, _deliveries(1, prefix="role-b/"))
    finally:
        await sink.close()
    assert first[0].ok and second[0].ok, (first, second)
    assert len(issued) >= 2 and len(set(issued)) == len(issued)  # a new assumed-role session each time
    keys = await _objects(authed["endpoint"], authed["bucket"], admin_key, admin_secret)
    assert any(k.startswith("role-a/") for k in keys) and any(k.startswith("role-b/") for k in keys)


async def test_head_bucket_is_signed_and_authorised_like_a_put(authed, monkeypatch):
    """`settings test --check probe` on S3: the same credentials path as a PUT (own keys, an
    assumed role), judged by a store that checks signatures and IAM permissions."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", authed["endpoint"])
    ak, sk = authed["users"]["admin"]
    dest = _destination(authed["endpoint"], authed["bucket"], ak, sk)
    sink = S3Sink(KEYS, None, 32, 10, allow_private=True)
    try:
        own = await sink.probe(dest, "partner:p")
        role = await sink.probe({**dest, "role_arn": authed["role_arn"]}, "partner:p")
        wrong = await sink.probe(_destination(authed["endpoint"], authed["bucket"], ak, "not-the-secret"),
                                 "partner:p")
        nobody = await sink.probe(_destination(authed["endpoint"], authed["bucket"], *authed["users"]["nobody"]),
                                  "partner:p")
    finally:
        await sink.close()
    assert own.ok and role.ok, (own, role)
    assert (wrong.status, nobody.status) == (403, 403) and "s3:ListBucket" in nobody.error
    assert not any(o.retryable for o in (wrong, nobody))


@pytest.mark.parametrize("url", [
    "https://bucket.s3.us-east-1.amazonaws.com/ws/1/job_summary/a.json",
    "https://s3.eu-west-1.amazonaws.com/bucket/k/a.json",
    "https://s3.example.com:443/bucket/k",  # the default port: left out of the host
    "http://127.0.0.1:9000/bucket/k%20x.json",
    "http://S3.Example.COM:8080/bucket/k",  # hosts are signed lowercase
    "http://[::1]:9000/bucket/k",
    "https://[2001:db8::1]/bucket/k",
])
def test_a_put_signs_exactly_the_host_the_transport_sends(url, monkeypatch):
    """The lean transport writes its own Host header and the PUT is signed with that very
    value (streamer/sinks/s3/service.py); it must be what botocore derives from the URL,
    or S3 answers SignatureDoesNotMatch."""
    import botocore.auth

    from streamer.sinks.transport import Pool

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime(2026, 12, 3, 1, 2, 3))
    creds = Credentials("AKIDEXAMPLE", "secret", "token").get_frozen_credentials()
    headers = {"Content-Type": CONTENT_TYPE, "x-amz-storage-class": "STANDARD_IA"}
    host = Pool(None, 1, 1).authority(url, encoded=True)
    ours = signed_headers(url, b'{"a":1}', creds, "us-east-1", headers, host=host)
    assert "host" not in {k.lower() for k in ours}  # the transport writes it, once
    assert ours == signed_headers(url, b'{"a":1}', creds, "us-east-1", headers)

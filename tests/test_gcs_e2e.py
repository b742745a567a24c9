"""Google Cloud Storage, end to end: real broker, a worker subprocess, fake-gcs-server.

One workspace with a service-account key whose token URI is a real token endpoint here
(it verifies the key's signed JWT before it issues a token, as Google's does), one with the
deployment's default credentials (GOOGLE_APPLICATION_CREDENTIALS, same token endpoint), one
whose bucket does not exist (a dead letter at once). Then the topics and the worker's log are
scanned for the private key.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import aiohttp
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from streamer import topics as T
from tests.support import accepted, activity_event, admin_for, consume, job_event, produce, serve


async def token_server(public_key, issued: list):
    async def token(request: web.Request) -> web.Response:
        form = urllib.parse.parse_qs((await request.read()).decode())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        claims = jwt.decode(form["assertion"][0], public_key, algorithms=["RS256"], audience=str(request.url))
        issued.append(claims)
        return web.json_response({"access_token": f"tok-{len(issued)}", "expires_in": 3600, "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/token", token)
    runner, base = await serve(app)
    return runner, base + "/token"


async def objects(endpoint: str, bucket: str, expect: int, timeout: float = 30) -> dict:
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + timeout
        while True:
            async with s.get(f"{endpoint}/storage/v1/b/{bucket}/o") as r:
                items = (await r.json()).get("items", [])
            if len(items) >= expect or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        out = {}
        for item in items:
            name = urllib.parse.quote(item["name"], safe="")
            async with s.get(f"{endpoint}/storage/v1/b/{bucket}/o/{name}?alt=media") as r:
                out[item["name"]] = (await r.read(), item.get("contentType"))
        return out


async def test_objects_with_a_service_account_key_default_credentials_and_a_missing_bucket(env, worker_factory, gcs,
                                                                                            kafka, prefix, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    issued: list = []
    runner, token_uri = await token_server(private.public_key(), issued)
    key = {"type": "service_account", "project_id": "p1", "private_key_id": "k1", "private_key": pem,
           "client_email": "streamer@p1.iam.gserviceaccount.com", "token_uri": token_uri}
    bucket = prefix.rstrip(".").lower() + "-gcs"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gcs}/storage/v1/b?project=p1", json={"name": bucket}) as r:
            assert r.status == 200, await r.text()
    # The deployment's default credentials: a key file named by GOOGLE_APPLICATION_CREDENTIALS
    # (as a mounted Kubernetes secret would be), of another service account.
    default_key = {**key, "client_email": "deployment@p1.iam.gserviceaccount.com"}
    default_file = tmp_path / "deployment-key.json"
    default_file.write_bytes(orjson.dumps(default_key))
    try:
        w = worker_factory({"GOOGLE_APPLICATION_CREDENTIALS": str(default_file)})
        w.wait_ready()
        async with admin_for(env) as admin:
            for ws in ("g1", "g2", "g3"):
                await accepted(admin, "register_workspace", workspace_id=ws, partner_id="gp", role="customer")
            dest = {"type": "gcs", "endpoint_url": gcs, "service_account_key": orjson.dumps(key).decode()}
            await accepted(admin, "put_workspace_config", workspace_id="g1",
                           config={"destination": {**dest, "bucket": bucket, "prefix": "audit"}})
            await accepted(admin, "put_workspace_config", workspace_id="g2",
                           config={"destination": {**dest, "bucket": bucket + "-missing"}})
            await accepted(admin, "put_workspace_config", workspace_id="g3",
                           config={"destination": {"type": "gcs", "endpoint_url": gcs, "bucket": bucket,
                                                   "prefix": "default-credentials"}})
        job = job_event("g1", "j-g1", recipe_id=5)
        await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"g1", orjson.dumps(job)),
                                                       (b"g2", orjson.dumps(job_event("g2", "j-g2")))])
        await produce(kafka, prefix + T.USER_ACTIVITY, [(b"g1", orjson.dumps(activity_event("g1", "ua-g1"))),
                                                        (b"g3", orjson.dumps(activity_event("g3", "ua-g3")))])

        got = await objects(gcs, bucket, 3)
        names = sorted(got)
        assert len(names) == 3 and names[0].startswith("audit/g1/activities/") and names[1].startswith("audit/g1/jobs/5/")
        assert names[2].startswith("default-credentials/g3/activities/")
        assert orjson.loads(got[names[1]][0]) == job and got[names[1]][1] == "application/json"
        # Each destination used its own credentials: the configured key, and the deployment's.
        assert {c["iss"] for c in issued} == {key["client_email"], default_key["client_email"]}

        letters = await consume(kafka, prefix + T.DEAD_LETTERS, 1)
        assert [dict(m.headers)["eid"] for m in letters] == [b"j-g2"]
        assert b"gcs 404" in dict(letters[0].headers)["err"]
        # `settings test --check probe`: Get Bucket with the key's token, writing nothing.
        async with admin_for(env) as admin:
            found = await accepted(admin, "test_destination", workspace_id="g1", check="probe")
            missing = await admin.run("test_destination", workspace_id="g2", check="probe")
        assert (found["check"], found["provider_status"]) == ("gcs Get Bucket", 200)
        assert (missing["status"], missing["provider_status"]) == ("rejected", 404), missing
        assert len(await objects(gcs, bucket, 4, timeout=0)) == 3  # the probe wrote nothing
        w.stop()
    finally:
        await runner.cleanup()
    seen = [w.log().encode()]
    for topic in (T.SETTINGS_COMMANDS, T.SETTINGS_RESULTS, T.SETTINGS_TABLE, T.DELIVERIES_S3, T.DEAD_LETTERS):
        for m in await consume(kafka, prefix + topic, 10_000, timeout=3):
            seen.append((m.key or b"") + (m.value or b"") + b"".join(v for _, v in m.headers or ()))
    secret = pem.splitlines()[5].encode()
    assert not any(secret in b for b in seen), "the private key reached a topic or the log"

"""Azure Blob Storage, end to end: real broker, a worker subprocess, Azurite.

Three workspaces, one per kind of credential (account key, SAS token, connection string),
each to its own container; a fourth to a container that does not exist (a fatal error: a
dead letter at once), replayed once the container exists. Then every topic and the
worker's log are scanned for the secrets.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import orjson
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from streamer import topics as T
from streamer.dev.local import Azurite
from tests.support import accepted, activity_event, admin_for, consume, job_event, produce

CONN = "DefaultEndpointsProtocol=http;AccountName={a};AccountKey={k};BlobEndpoint={url};"


def blob_config(account_url: str, container: str, **dest) -> dict:
    return {"jobs": "status", "user_activity": True,
            "destination": {"type": "azure_blob", "account_url": account_url, "container": container, **dest}}


async def blobs(service: BlobServiceClient, container: str, expect: int, timeout: float = 30) -> dict:
    """{name: (body, content type)} once `expect` blobs are there (or at the timeout)."""
    import asyncio
    import time

    client = service.get_container_client(container)
    deadline = time.monotonic() + timeout
    while True:
        names = [b.name async for b in client.list_blobs()]
        if len(names) >= expect or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    out = {}
    for name in names:
        downloaded = await client.download_blob(name)
        out[name] = (await downloaded.readall(), downloaded.properties.content_settings.content_type)
    return out


async def test_blobs_for_each_credential_kind_and_a_missing_container(env, worker_factory, azurite, kafka, prefix):
    conn = CONN.format(a=Azurite.ACCOUNT, k=Azurite.KEY, url=azurite)
    tag = prefix.rstrip(".").lower()
    containers = {"key": f"{tag}-key", "sas": f"{tag}-sas", "conn": f"{tag}-conn"}
    async with BlobServiceClient.from_connection_string(conn) as service:
        for name in containers.values():
            await service.create_container(name)
        sas = generate_container_sas(Azurite.ACCOUNT, containers["sas"], account_key=Azurite.KEY,
                                     permission=ContainerSasPermissions(write=True, create=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        w = worker_factory()
        w.wait_ready()
        async with admin_for(env) as admin:
            for ws in ("az1", "az2", "az3", "az4"):
                await accepted(admin, "register_workspace", workspace_id=ws, partner_id="azp", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id="az1",
                           config=blob_config(azurite, containers["key"], prefix="audit",
                                              account_name=Azurite.ACCOUNT, account_key=Azurite.KEY))
            await accepted(admin, "put_workspace_config", workspace_id="az2",
                           config=blob_config(azurite, containers["sas"], sas_token="?" + sas))
            await accepted(admin, "put_workspace_config", workspace_id="az3",
                           config=blob_config(azurite, containers["conn"], connection_string=conn))
            await accepted(admin, "put_workspace_config", workspace_id="az4",
                           config=blob_config(azurite, f"{tag}-missing", connection_string=conn))

        job = job_event("az1", "j-az1", recipe_id=7, status="failed")
        await produce(kafka, prefix + T.JOBS_SUMMARY,
                      [(b"az1", orjson.dumps(job)), (b"az2", orjson.dumps(job_event("az2", "j-az2"))),
                       (b"az4", orjson.dumps(job_event("az4", "j-az4")))])
        await produce(kafka, prefix + T.USER_ACTIVITY,
                      [(b"az3", orjson.dumps(activity_event("az3", "ua-az3")))])

        got = await blobs(service, containers["key"], 1)
        [(name, (body, content_type))] = got.items()
        assert name.startswith("audit/az1/jobs/7/") and name.endswith("-failed.json")
        assert orjson.loads(body) == job and content_type == "application/json"
        [name] = await blobs(service, containers["sas"], 1)
        assert name.startswith("az2/jobs/1/")
        [name] = await blobs(service, containers["conn"], 1)
        assert name.startswith("az3/activities/") and "-user_login-ua-az3-" in name

        letters = await consume(kafka, prefix + T.DEAD_LETTERS, 1)
        assert [dict(m.headers)["eid"] for m in letters] == [b"j-az4"]
        assert b"ContainerNotFound" in dict(letters[0].headers)["err"] and dict(letters[0].headers)["type"] == b"azure_blob"
        # Fixed (the container now exists) and replayed: it reaches Azure, not the S3 engine
        # that reads the same topic.
        await service.create_container(f"{tag}-missing")
        async with admin_for(env) as admin:
            result = await accepted(admin, "replay_dead_letters", workspace_id="az4")
        assert result["replayed"] == 1
        [name] = await blobs(service, f"{tag}-missing", 1)
        assert name.startswith("az4/jobs/1/")
        # `streamer settings test` writes a real test blob through the same sink.
        async with admin_for(env) as admin:
            await accepted(admin, "test_destination", workspace_id="az3")
        names = await blobs(service, containers["conn"], 2)
        assert any(n.startswith("streamer-test/") for n in names), names
        # `settings test --check probe`: Get Container Properties, writing nothing.
        async with admin_for(env) as admin:
            found = await accepted(admin, "test_destination", workspace_id="az1", check="probe")
            missing = await admin.run("test_destination", workspace_id="az1", check="probe",
                                      config=blob_config(azurite, f"{tag}-none", connection_string=conn))
        assert (found["check"], found["provider_status"]) == ("azure_blob Get Container Properties", 200)
        assert (missing["status"], missing["provider_status"]) == ("rejected", 404), missing
        assert "ContainerNotFound" in missing["reason"]
        assert len(await blobs(service, containers["key"], 2, timeout=0)) == 1

    cli = subprocess.run([sys.executable, "-m", "streamer", "settings", "get", "--workspace", "az3"],
                         capture_output=True, text=True, env={**__import__("os").environ, **env})
    assert cli.returncode == 0 and orjson.loads(cli.stdout)[0]["config"]["destination"]["connection_string"] == "***"
    w.stop()
    seen = [w.log().encode(), cli.stdout.encode()]
    for topic in (T.SETTINGS_COMMANDS, T.SETTINGS_RESULTS, T.SETTINGS_TABLE, T.DELIVERIES_S3, T.DEAD_LETTERS):
        for m in await consume(kafka, prefix + topic, 10_000, timeout=3):
            seen.append((m.key or b"") + (m.value or b"") + b"".join(v for _, v in m.headers or ()))
    for secret in (Azurite.KEY, sas.split("sig=")[1]):
        assert not any(secret.encode() in b for b in seen), "a plaintext secret reached a topic or the log"

"""Azure Blob with the deployment's default credentials, end to end.

A destination with no credential of its own uses `DefaultAzureCredential`. Here it finds a
managed identity the way App Service and Azure Functions expose one (`IDENTITY_ENDPOINT`
and `IDENTITY_HEADER`): a token endpoint on loopback that checks the header and answers a
token for the storage audience. Azurite runs on HTTPS with its OAuth check on (the Azure SDK
sends bearer tokens over HTTPS only; Azurite then checks audience, issuer and expiry), and
the worker trusts the test CA through SSL_CERT_FILE, as a pod would mount a bundle.
"""

from __future__ import annotations

import base64
import time

import orjson
from aiohttp import web
from azure.storage.blob.aio import BlobServiceClient

from streamer import topics as T
from streamer.dev.local import Azurite, free_port
from tests.support import accepted, activity_event, admin_for, produce, serve
from tests.test_azure_blob_e2e import blob_config, blobs
from tests.tls_proxy import Authority

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
IDENTITY_HEADER = "identity-header-secret"


def _token() -> str:
    """A token as Entra issues it for storage; Azurite's basic check reads its claims and
    does not verify the signature, so the signature here is a placeholder."""
    def part(obj) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/",
              "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "managed-identity", "tid": TENANT}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


async def _identity_endpoint(asked: list) -> tuple[web.AppRunner, str]:
    async def token(request: web.Request) -> web.Response:
        asked.append((request.headers.get("X-IDENTITY-HEADER"), request.query.get("resource")))
        if request.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            return web.json_response({"error": "invalid header"}, status=401)
        return web.json_response({"access_token": _token(), "expires_on": str(int(time.time()) + 3600),
                                  "resource": request.query.get("resource"), "token_type": "Bearer"})

    app = web.Application()
    app.router.add_get("/msi/token", token)
    runner, base = await serve(app)
    return runner, base + "/msi/token"


async def test_blobs_with_the_deployments_managed_identity(env, worker_factory, kafka, prefix, tmp_path):
    ca = Authority("azurite-test-ca")
    issued = ca.issue("localhost", server=True)
    (tmp_path / "cert.pem").write_text(issued.cert)
    (tmp_path / "key.pem").write_text(issued.key)
    (tmp_path / "ca.pem").write_text(ca.cert)
    azurite = Azurite(tmp_path / "azurite", free_port(), tmp_path / "cert.pem", tmp_path / "key.pem", oauth=True)
    azurite.start()
    asked: list = []
    runner, endpoint = await _identity_endpoint(asked)
    container = prefix.rstrip(".").lower() + "-mi"
    try:
        conn = (f"DefaultEndpointsProtocol=https;AccountName={Azurite.ACCOUNT};AccountKey={Azurite.KEY};"
                f"BlobEndpoint={azurite.account_url};")
        async with BlobServiceClient.from_connection_string(conn, connection_verify=str(tmp_path / "ca.pem")) as service:
            await service.create_container(container)
            w = worker_factory({"IDENTITY_ENDPOINT": endpoint, "IDENTITY_HEADER": IDENTITY_HEADER,
                                "SSL_CERT_FILE": str(tmp_path / "ca.pem")})
            w.wait_ready()
            async with admin_for(env) as admin:
                await accepted(admin, "register_workspace", workspace_id="mi1", partner_id="mp", role="customer")
                await accepted(admin, "put_workspace_config", workspace_id="mi1",
                               config=blob_config(azurite.account_url, container, prefix="audit"))
            event = activity_event("mi1", "ua-mi1")
            await produce(kafka, prefix + T.USER_ACTIVITY, [(b"mi1", orjson.dumps(event))])
            got = await blobs(service, container, 1)
            assert [orjson.loads(body) for body, _type in got.values()] == [event], w.log()[-3000:]
            assert next(iter(got)).startswith("audit/mi1/activities/")
        # The worker asked the managed identity, with its header, for a storage token.
        assert asked and all(h == IDENTITY_HEADER for h, _r in asked)
        assert any((r or "").startswith("https://storage.azure.com") for _h, r in asked)
        w.stop()
    finally:
        await runner.cleanup()
        azurite.stop()

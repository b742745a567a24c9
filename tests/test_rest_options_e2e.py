"""REST destination options through the real broker and a worker subprocess (issue 14):
auth types (basic, API key, bearer, OAuth2 client credentials with a token revoked once),
the Sumo Logic URL as a secret, TLS per destination (own CA, client certificate) and
proxies (per destination, and the deployment's HTTPS_PROXY / NO_PROXY).

Each test ends with a byte scan of every topic of the run, the worker's log, its metrics
and `streamer settings list` for every secret the destinations were configured with.
The request building and the sink alone: tests/test_rest_options.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer import topics as T
from tests.providers import OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPE, ProviderServer
from tests.support import accepted, admin_for, consume, job_event, produce
from tests.tls_proxy import Authority, ForwardProxy, server_context


def http(url: str, **dest) -> dict:
    return {"jobs": "status", "user_activity": False, "destination": {"type": "http", "url": url, **dest}}


async def everything_written(kafka: str, env: dict, worker) -> list[bytes]:
    """Every record of every topic of this run (the project's and Faust's own), the worker's
    log and metrics, and `streamer settings list` (last), as byte strings to search."""
    prefix, app_id = env["STREAMER_TOPIC_PREFIX"], env["STREAMER_APP_ID"]
    c = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False,
                         max_partition_fetch_bytes=64 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await c.start()
    blobs = []
    try:
        cluster = await c._client.fetch_all_metadata()  # what topics() reads, with the partitions
        names = [t for t in cluster.topics() if t.startswith((prefix, app_id))]
        assert prefix + T.SETTINGS_TABLE in names and prefix + T.DELIVERIES_HTTP in names
        tps = [TopicPartition(t, p) for t in names for p in cluster.partitions_for_topic(t)]
        c.assign(tps)
        begin, end = await c.beginning_offsets(tps), await c.end_offsets(tps)
        for tp in tps:
            c.seek(tp, begin[tp])
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:  # up to each partition's end, no waiting past it
            for msgs in (await c.getmany(timeout_ms=200)).values():
                blobs.extend((m.key or b"") + b"|" + (m.value or b"") + b"|" + b"|".join(
                    k.encode() + b"=" + (v or b"") for k, v in m.headers or ()) for m in msgs)
            pending = {tp for tp in pending if await c.position(tp) < end[tp]}
        assert not pending, pending
        assert len(blobs) > len(names), "the scan read (almost) nothing"
    finally:
        await c.stop()
    blobs.append(worker.get("/metrics")[1])
    blobs.append(worker.log().encode())
    listed = subprocess.run([sys.executable, "-m", "streamer", "settings", "list"], capture_output=True,
                            env={**os.environ, **env}, timeout=60)
    assert listed.returncode == 0, listed.stderr
    blobs.append(listed.stderr)
    blobs.append(listed.stdout)  # last: the callers read it
    return blobs


def assert_nowhere(blobs: list[bytes], secrets: dict[str, str]) -> None:
    for what, secret in secrets.items():
        assert secret and not any(secret.encode() in b for b in blobs), f"{what} was written somewhere"


async def test_auth_types_and_a_sumo_url_secret_through_a_worker(env, worker_factory, kafka, prefix, providers):
    secrets = {"basic password": "basic-pass-e2e-31f7", "bearer token": "bearer-tok-e2e-9c02",
               "api key": "api-key-e2e-5d6a", "oauth client secret": OAUTH_CLIENT_SECRET,
               "sumo source token": "ZaVnC4dhaV0-sumo-e2e-token-77a1", "wrong password": "wrong-pass-e2e-0b3c"}
    basic = "Basic " + base64.b64encode(f"audit:{secrets['basic password']}".encode()).decode()
    providers.required.update({"basic": {"Authorization": basic}, "wrong": {"Authorization": basic},
                               "bearer": {"Authorization": f"Bearer {secrets['bearer token']}"},
                               "key": {"X-Api-Key": secrets["api key"]}})
    providers.oauth.add("oauth")
    providers.revoke_next.add("oauth")  # the first token is revoked after its first request
    configs = {
        "basic": http(providers.url("generic", "basic"),
                      auth={"type": "basic", "username": "audit", "password": secrets["basic password"]}),
        "wrong": http(providers.url("generic", "wrong"),
                      auth={"type": "basic", "username": "audit", "password": secrets["wrong password"]}),
        "bearer": http(providers.url("generic", "bearer"), auth={"type": "bearer", "token": secrets["bearer token"]}),
        "key": http(providers.url("generic", "key"),
                    auth={"type": "api_key", "header": "X-Api-Key", "value": secrets["api key"]}),
        "oauth": http(providers.url("generic", "oauth"), auth={
            "type": "oauth2_client_credentials", "token_url": providers.token_url, "client_id": OAUTH_CLIENT_ID,
            "client_secret": OAUTH_CLIENT_SECRET, "scope": OAUTH_SCOPE}),
        "sumo": http(providers.url("sumo", secrets["sumo source token"]), provider="sumo"),
    }
    w = worker_factory()
    w.wait_ready()
    async with admin_for(env) as admin:
        for ws, config in configs.items():
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="rest", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws, config=config)
    await produce(kafka, prefix + T.JOBS_SUMMARY, [(ws.encode(), orjson.dumps(job_event(ws, f"j-{ws}-1")))
                                                   for ws in configs])
    for name in ("basic", "bearer", "key", "oauth"):
        assert [i["id"] for i in await providers.wait_items(name, 1)] == [f"j-{name}-1"], name
    assert [i["id"] for i in await providers.wait_items(secrets["sumo source token"], 1)] == ["j-sumo-1"]
    # The token is revoked now: the next request is refused once, a new token fetched, the request sent again.
    await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"oauth", orjson.dumps(job_event("oauth", "j-oauth-2")))])
    assert len(await providers.wait_items("oauth", 2)) == 2
    assert sorted(providers.ids("oauth")) == ["j-oauth-1", "j-oauth-2"]
    assert providers.unauthorized["oauth"] == 1 and len(providers.tokens) == 2
    assert [r["client_auth"] for r in providers.token_requests] == ["basic", "basic"]

    (letter,) = await consume(kafka, prefix + T.DEAD_LETTERS, 1)
    headers = dict(letter.headers)
    assert headers["eid"] == b"j-wrong-1" and headers["err"].startswith(b"HTTP 401"), headers["err"]
    # Each event was sent once (twice for the refused token), and a 401 with a static secret never again.
    assert dict(providers.unauthorized) == {"oauth": 1, "wrong": 1}
    assert dict(providers.requests) == {"basic": 1, "bearer": 1, "key": 1, "oauth": 2, secrets["sumo source token"]: 1}

    w.stop()
    blobs = await everything_written(kafka, env, w)
    shown = {row["workspace"]: row["config"]["destination"] for row in json.loads(blobs[-1].decode())}
    assert shown["sumo"]["url"] == "***" and shown["oauth"]["auth"]["client_secret"] == "***"
    assert {shown[ws]["auth"].get(f) for ws, f in (("basic", "password"), ("bearer", "token"), ("key", "value"))} \
        == {"***"}
    assert_nowhere(blobs, {**secrets, "basic header": basic.split()[1],
                           **{f"access token {i}": t for i, t in enumerate(providers.tokens)}})
    # ...and the scan can see them: the sumo destination id and a delivered event id are in there.
    assert any(b"workspace:sumo" in b for b in blobs) and any(b"j-oauth-2" in b for b in blobs)


async def test_tls_per_destination_and_proxies_through_a_worker(env, worker_factory, kafka, prefix, tmp_path):
    ca, stranger = Authority("dest-ca"), Authority("stranger-ca")
    client = ca.issue("streamer", server=False)
    server = ProviderServer()
    await server.start(ssl_context=server_context(ca, tmp_path))
    deployment, own = ForwardProxy(), ForwardProxy()
    await deployment.start()
    await own.start()
    mtls = {"ca_bundle": ca.cert, "client_cert": client.cert, "client_key": client.key}
    by_name = server.base.replace("127.0.0.1", "localhost")
    configs = {
        "direct": http(server.url("generic", "direct"), tls=mtls),  # NO_PROXY names 127.0.0.1
        "wrongca": http(server.url("generic", "wrongca"), tls={**mtls, "ca_bundle": stranger.cert}),
        "envproxy": http(f"{by_name}/generic/envproxy", tls=mtls),  # through HTTPS_PROXY
        "ownproxy": http(server.url("generic", "ownproxy"), tls=mtls, proxy_url=own.url),
    }
    try:
        w = worker_factory({"HTTPS_PROXY": deployment.url, "NO_PROXY": "127.0.0.1"})
        w.wait_ready()
        async with admin_for(env) as admin:
            for ws, config in configs.items():
                await accepted(admin, "register_workspace", workspace_id=ws, partner_id="tls", role="customer")
                await accepted(admin, "put_workspace_config", workspace_id=ws, config=config)
        await produce(kafka, prefix + T.JOBS_SUMMARY, [(ws.encode(), orjson.dumps(job_event(ws, f"j-{ws}")))
                                                       for ws in configs])
        for name in ("direct", "envproxy", "ownproxy"):
            assert [i["id"] for i in await server.wait_items(name, 1)] == [f"j-{name}"], name
        # A certificate that does not verify is a network error: retried (parked), never delivered.
        parked = await consume(kafka, prefix + T.DELIVERIES_RETRY, 1, predicate=lambda m: m.key == b"workspace:wrongca")
        assert parked and b"certificate verify failed" in dict(parked[0].headers)["hist"], parked
        assert server.items("wrongca") == [] and server.requests["wrongca"] == 0
        assert set(deployment.tunnels) == {f"localhost:{server.port}"}
        assert set(own.tunnels) == {f"127.0.0.1:{server.port}"}
        assert server.violations == []
        w.stop()
        blobs = await everything_written(kafka, env, w)
    finally:
        await server.stop()
        await deployment.stop()
        await own.stop()
    key_body = max(client.key.splitlines(), key=len)
    assert_nowhere(blobs, {"client key": key_body})
    assert any(ca.cert.splitlines()[1].encode() in b for b in blobs)  # the CA is not a secret: the scan sees it

"""A real HTTP server that behaves like Microsoft Entra's token endpoint and the Azure
Monitor Logs Ingestion API, for end-to-end tests.

It enforces the contract (client-credentials form with the Monitor scope, a bearer token it
issued and that has not expired, the rule and stream path with the api-version, a JSON array
of objects with TimeGenerated, at most 1 MB per call) and answers 400/401/404/413 when it is
broken, so a wrong request fails the test instead of being recorded. Faults: a queue of
statuses to answer first, with an optional Retry-After.
"""

from __future__ import annotations

import gzip
import time
import urllib.parse
from dataclasses import dataclass, field

import orjson
from aiohttp import web

TENANT, CLIENT_ID, CLIENT_SECRET = "tenant-1", "app-1", "entra-secret-9f3c"
RULE, STREAM = "dcr-00112233445566778899aabbccddeeff", "Custom-WorkatoAudit_CL"
MAX_BYTES = 1_000_000


@dataclass
class Call:
    records: list
    raw_size: int
    token: str


@dataclass
class MonitorServer:
    token_lifetime_s: int = 3600
    calls: list[Call] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)  # issued token -> expiry (monotonic)
    refused: list[str] = field(default_factory=list)  # why requests were refused
    statuses: list[int] = field(default_factory=list)  # answered first, one per ingestion call
    retry_after: str | None = None
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self) -> list:
        return [r for c in self.calls for r in c.records]

    async def _token(self, request: web.Request) -> web.Response:
        form = urllib.parse.parse_qs((await request.read()).decode())
        want = {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID],
                "scope": ["https://monitor.azure.com//.default"]}
        if request.match_info["tenant"] != TENANT or any(form.get(k) != v for k, v in want.items()):
            self.refused.append(f"token request {request.match_info['tenant']} {sorted(form)}")
            return web.json_response({"error": "invalid_request"}, status=400)
        if form.get("client_secret") != [CLIENT_SECRET]:
            self.refused.append("wrong client secret")
            # Echoes what it was given, as a careless identity provider might: the sink must
            # keep it out of error texts.
            return web.json_response({"error": "invalid_client",
                                      "error_description": f"secret {form.get('client_secret')} is wrong"}, status=401)
        token = f"tok-{len(self.tokens) + 1}"
        self.tokens[token] = time.monotonic() + self.token_lifetime_s
        return web.json_response({"token_type": "Bearer", "expires_in": self.token_lifetime_s,
                                  "access_token": token})

    async def _ingest(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self.tokens.get(token, 0) < time.monotonic():
            self.refused.append("missing, unknown or expired token")
            return web.json_response({"error": {"code": "InvalidToken"}}, status=401)
        if (request.match_info["rule"], request.match_info["stream"]) != (RULE, STREAM) \
                or request.query.get("api-version") != "2023-01-01":
            self.refused.append(f"path {request.path_qs}")
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        if self.statuses:
            status = self.statuses.pop(0)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=status, headers=headers)
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip" and body[:2] == b"\x1f\x8b":  # aiohttp may have inflated it already
            body = gzip.decompress(body)
        if len(body) > MAX_BYTES:
            self.refused.append(f"{len(body)} bytes in one call")
            return web.json_response({"error": {"code": "ContentLengthLimitExceeded"}}, status=413)
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError:
            records = None
        if request.content_type != "application/json" or not isinstance(records, list) or not records \
                or not all(isinstance(r, dict) and "TimeGenerated" in r for r in records):
            self.refused.append("not a JSON array of records with TimeGenerated")
            return web.json_response({"error": {"code": "InvalidContent"}}, status=400)
        self.calls.append(Call(records, len(body), token))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_post("/dataCollectionRules/{rule}/streams/{stream}", self._ingest)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

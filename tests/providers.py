"""Real HTTP servers that behave like the log providers, for end-to-end tests.

Each enforces its provider's contract (auth header, body shape, size limits, success
status) and answers 4xx when it is broken, so a wrong encoding fails the test instead of
being recorded. Faults are injected per destination name: a queue of statuses to answer
first (with optional Retry-After), or a delay to hang for.

The read-only endpoints `settings test --check probe` uses are served too: Datadog's
`GET /api/v1/validate` (200 `{"valid": true}` for the right DD-API-KEY, 403 otherwise) and
Splunk HEC's `GET /services/collector/health` (200 healthy, or an injected 503). Neither
records anything as received, so a test can tell a probe from a write.

Authentication per destination name (generic and Sumo Logic routes): headers a request
must carry exactly (basic, API key, bearer), or a bearer token this server issued at
`/oauth/token` (the client-credentials grant, client authenticated by HTTP Basic or in the
form) that is not revoked; anything else is answered 401. `revoke_next` revokes a name's
token right after the first request it authorised, as an identity provider may.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import urllib.parse
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from aiohttp import web

SPLUNK_TOKEN = "hec-token-123"
DD_API_KEY = "dd-key-456"
OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPE = "streamer-client", "oauth-secret-7c41e2d9", "audit.write"


@dataclass
class Received:
    provider: str
    name: str
    headers: dict[str, str]
    items: list  # parsed messages (one per event)
    raw_size: int  # uncompressed body bytes
    body: bytes = b""  # the uncompressed body as received


@dataclass
class Fault:
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    hang_s: float = 0.0
    echo_path: bool = False  # the answer names the path it was sent to, as some gateways do


class ProviderServer:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.arrivals: list[tuple[float, object]] = []  # (wall time, item) as each item arrived
        self.requests: dict[str, int] = defaultdict(int)  # every request, faults included
        self.faults: dict[str, Fault] = defaultdict(Fault)
        self.violations: list[str] = []
        self.probes: list[tuple[str, str]] = []  # (destination name, path) of every validate/health GET
        self.splunk_acks: dict[str, str] = {}  # name -> "ok" | "never": its token has indexer acknowledgement on
        self.pending_acks: dict[tuple[str, int], tuple] = {}  # (channel, ackId) -> the request, until acknowledged
        self.ack_queries: dict[str, int] = defaultdict(int)
        self._next_ack = 0
        self.required: dict[str, dict[str, str]] = {}  # name -> headers its requests must carry, exactly
        self.oauth: set[str] = set()  # names whose requests need a token issued here
        self.revoke_next: set[str] = set()  # names whose token is revoked after the next request it authorises
        self.tokens: dict[str, bool] = {}  # issued token -> still valid
        self.token_requests: list[dict] = []  # the grant forms received (with how the client authenticated)
        self.unauthorized: dict[str, int] = defaultdict(int)  # 401s answered, per name
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.scheme = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base}/oauth/token"

    def ids(self, name: str) -> list[str]:
        """Event ids received by one destination (Datadog items are unwrapped)."""
        out = []
        for item in self.items(name):
            msg = orjson.loads(item["message"]) if isinstance(item.get("message"), str) else item
            out.append(str(msg.get("id")))
        return out

    def url(self, provider: str, name: str) -> str:
        return {"generic": f"{self.base}/generic/{name}", "sumo": f"{self.base}/sumo/{name}",
                "datadog": f"{self.base}/dd/{name}", "splunk": f"{self.base}/splunk/{name}"}[provider]

    def items(self, name: str) -> list:
        return [i for r in self.received if r.name == name for i in r.items]

    async def wait_items(self, name: str, count: int, timeout: float = 30.0) -> list:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.items(name)) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        return self.items(name)

    async def start(self, port: int = 0, ssl_context=None) -> None:
        """`ssl_context`: serve HTTPS with it (its verify mode decides whether client
        certificates are required)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/generic/{name}", self._generic)
        app.router.add_post("/sumo/{name}", self._sumo)
        app.router.add_post("/dd/{name}/api/v2/logs", self._datadog)
        app.router.add_post("/splunk/{name}/services/collector/event", self._splunk)
        app.router.add_post("/splunk/{name}/services/collector/ack", self._splunk_ack)
        app.router.add_get("/dd/{name}/api/v1/validate", self._datadog_validate)
        app.router.add_get("/splunk/{name}/services/collector/health", self._splunk_health)
        app.router.add_get("/splunk/{name}/services/collector/health/1.0", self._splunk_health)
        app.router.add_post("/oauth/token", self._token)
        # A hanging fault holds its requests open: shutting down must not wait 60 s for them.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.scheme = "https" if ssl_context is not None else "http"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        # aiohttp inflates a gzip body itself; inflate here only if it did not.
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        return body

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in urllib.parse.parse_qsl((await request.read()).decode())}
        client_id, secret, how = form.get("client_id"), form.get("client_secret"), "body"
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):  # RFC 6749 2.3.1: each part form-urlencoded, then base64
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            client_id, secret, how = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password), "basic"
        self.token_requests.append({**{k: v for k, v in form.items() if k != "client_secret"}, "client_auth": how})
        if form.get("grant_type") != "client_credentials" or form.get("scope") != OAUTH_SCOPE:
            return self._bad(f"oauth: grant {form.get('grant_type')} scope {form.get('scope')}")
        if (client_id, secret) != (OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET):
            self.violations.append("oauth: wrong client credentials")
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"at-{len(self.tokens) + 1}-{uuid.uuid4().hex}"
        self.tokens[token] = True
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def _unauthorized(self, request: web.Request, name: str) -> web.Response | None:
        """401 unless the request carries what its destination's authentication requires."""
        required = self.required.get(name, {})
        ok = all(request.headers.get(h) == v for h, v in required.items())
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if name in self.oauth:
            ok = ok and self.tokens.get(token, False)
        if ok:
            if name in self.revoke_next:
                self.revoke_next.discard(name)
                self.tokens[token] = False
            return None
        self.unauthorized[name] += 1
        return web.json_response({"error": "unauthorized"}, status=401)

    async def _fault(self, name: str, request: web.Request | None = None) -> web.Response | None:
        self.requests[name] += 1
        f = self.faults.get(name)
        if f is None:
            return None
        if f.hang_s:
            await asyncio.sleep(f.hang_s)
        if f.statuses:
            status = f.statuses.pop(0)
            headers = {"Retry-After": f.retry_after} if f.retry_after else {}
            body = {"text": "injected", "code": 9}
            if f.echo_path and request is not None:
                body["path"] = request.path
            return web.json_response(body, status=status, headers=headers)
        return None

    def _bad(self, why: str, status: int = 400) -> web.Response:
        self.violations.append(why)
        return web.json_response({"error": why, "code": 6}, status=status)

    def _record(self, provider: str, request: web.Request, items: list, size: int, body: bytes = b"") -> None:
        self.received.append(Received(provider, request.match_info["name"], dict(request.headers), items, size,
                                      body))
        now = time.time()
        self.arrivals.extend((now, item) for item in items)

    async def _generic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if (refused := self._unauthorized(request, name)) is not None:
            return refused
        if (fault := await self._fault(name, request)) is not None:
            return fault
        body = await self._body(request)
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return self._bad("generic: Content-Type must be application/json")
        if not request.headers.get("Idempotency-Key"):
            return self._bad("generic: Idempotency-Key missing")
        try:
            item = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._bad("generic: body is not one JSON message")
        self._record("generic", request, [item], len(body), body)
        return web.json_response({"ok": True})

    async def _sumo(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if (refused := self._unauthorized(request, name)) is not None:
            return refused
        if (fault := await self._fault(name, request)) is not None:
            return fault
        body = await self._body(request)
        if len(body) > 1_000_000:
            return self._bad("sumo: body over 1 MB uncompressed", 413)
        try:
            items = [orjson.loads(line) for line in body.split(b"\n") if line]
        except orjson.JSONDecodeError:
            return self._bad("sumo: a line is not one JSON message")
        self._record("sumo", request, items, len(body))
        return web.Response(status=200)

    async def _datadog(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.headers.get("DD-API-KEY") != DD_API_KEY:
            # As the real intake can: the rejected key echoed in the answer.
            return self._bad(f"datadog: API key {request.headers.get('DD-API-KEY')} is not valid", 403)
        if (fault := await self._fault(name)) is not None:
            return fault
        body = await self._body(request)
        if len(body) > 5_000_000:
            return self._bad("datadog: payload over 5 MB", 413)
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._bad("datadog: body is not JSON")
        if not isinstance(items, list) or len(items) > 1000:
            return self._bad("datadog: body must be an array of at most 1000 items")
        for item in items:
            if len(orjson.dumps(item)) > 1_000_000:
                return self._bad("datadog: item over 1 MB", 413)
            if not isinstance(item.get("message"), str) or "ddsource" not in item:
                return self._bad("datadog: item needs a string message and ddsource")
        self._record("datadog", request, items, len(body))
        return web.json_response({}, status=202)

    async def _datadog_validate(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.probes.append((name, request.path))
        if request.headers.get("DD-API-KEY") != DD_API_KEY:
            return web.json_response({"errors": ["Forbidden"]}, status=403)
        if (fault := await self._fault(name)) is not None:
            return fault
        return web.json_response({"valid": True})

    async def _splunk_health(self, request: web.Request) -> web.Response:
        # As Splunk documents it: HEC's own state (queue space), not the token's.
        name = request.match_info["name"]
        self.probes.append((name, request.path))
        if (fault := await self._fault(name)) is not None:
            return fault
        return web.json_response({"text": "HEC is healthy", "code": 17})

    async def _splunk(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.headers.get("Authorization") != f"Splunk {SPLUNK_TOKEN}":
            return web.json_response({"text": "Invalid token", "code": 4}, status=403)
        if (fault := await self._fault(name)) is not None:
            return fault
        body = (await self._body(request)).decode()
        if len(body) > 1_000_000:
            return self._bad("splunk: body over 1 MB", 413)
        decoder, pos, items = json.JSONDecoder(), 0, []
        while pos < len(body):
            try:
                env, pos = decoder.raw_decode(body, pos)
            except json.JSONDecodeError:
                return web.json_response({"text": "Invalid data format", "code": 6}, status=400)
            if not isinstance(env, dict) or "event" not in env:
                return web.json_response({"text": "Event field is required", "code": 12}, status=400)
            items.append(env)
            while pos < len(body) and body[pos] in " \r\n\t":
                pos += 1
        if body.lstrip().startswith("["):
            return web.json_response({"text": "Invalid data format", "code": 6}, status=400)
        mode = self.splunk_acks.get(name)
        if mode is None:
            self._record("splunk", request, items, len(body))
            return web.json_response({"text": "Success", "code": 0})
        # A token with indexer acknowledgement on: HEC requires a channel and answers an ackId;
        # the events count as received only once acknowledged (never, in mode "never").
        channel = request.headers.get("X-Splunk-Request-Channel")
        if not channel:
            return web.json_response({"text": "Data channel is missing", "code": 10}, status=400)
        ack = self._next_ack = self._next_ack + 1
        self.pending_acks[(channel, ack)] = (name, items, len(body), request)
        return web.json_response({"text": "Success", "code": 0, "ackId": ack})

    async def _splunk_ack(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.headers.get("Authorization") != f"Splunk {SPLUNK_TOKEN}":
            return web.json_response({"text": "Invalid token", "code": 4}, status=403)
        channel = request.query.get("channel") or request.headers.get("X-Splunk-Request-Channel")
        if not channel:
            return web.json_response({"text": "Data channel is missing", "code": 10}, status=400)
        asked = json.loads(await request.read()).get("acks", [])
        self.ack_queries[name] += 1
        answer = {}
        for ack in asked:
            pending = self.pending_acks.get((channel, ack))
            indexed = pending is not None and self.splunk_acks.get(name) == "ok"
            if indexed:  # acknowledged once: like Splunk, it then forgets the id
                _name, items, size, original = self.pending_acks.pop((channel, ack))
                self._record("splunk", original, items, size)
            answer[str(ack)] = indexed
        return web.json_response({"acks": answer})

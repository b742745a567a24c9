"""Real HTTP servers that behave like the log providers, for end-to-end tests.

Each enforces its provider's contract (auth header, body shape, size limits, success
status) and answers 4xx when it is broken, so a wrong encoding fails the test instead of
being recorded. Faults are injected per destination name: a queue of statuses to answer
first (with optional Retry-After), or a delay to hang for.

The read-only endpoints `settings test --check probe` uses are served too: Datadog's
`GET /api/v1/validate` (200 `{"valid": true}` for the right DD-API-KEY, 403 otherwise) and
Splunk HEC's `GET /services/collector/health` (200 healthy, or an injected 503). Neither
records anything as received, so a test can tell a probe from a write.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from aiohttp import web

SPLUNK_TOKEN = "hec-token-123"
DD_API_KEY = "dd-key-456"


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


class ProviderServer:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.arrivals: list[tuple[float, object]] = []  # (wall time, item) as each item arrived
        self.requests: dict[str, int] = defaultdict(int)  # every request, faults included
        self.faults: dict[str, Fault] = defaultdict(Fault)
        self.violations: list[str] = []
        self.probes: list[tuple[str, str]] = []  # (destination name, path) of every validate/health GET
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/generic/{name}", self._generic)
        app.router.add_post("/sumo/{name}", self._sumo)
        app.router.add_post("/dd/{name}/api/v2/logs", self._datadog)
        app.router.add_post("/splunk/{name}/services/collector/event", self._splunk)
        app.router.add_get("/dd/{name}/api/v1/validate", self._datadog_validate)
        app.router.add_get("/splunk/{name}/services/collector/health", self._splunk_health)
        app.router.add_get("/splunk/{name}/services/collector/health/1.0", self._splunk_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        # aiohttp inflates a gzip body itself; inflate here only if it did not.
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        return body

    async def _fault(self, name: str) -> web.Response | None:
        self.requests[name] += 1
        f = self.faults.get(name)
        if f is None:
            return None
        if f.hang_s:
            await asyncio.sleep(f.hang_s)
        if f.statuses:
            status = f.statuses.pop(0)
            headers = {"Retry-After": f.retry_after} if f.retry_after else {}
            return web.json_response({"text": "injected", "code": 9}, status=status, headers=headers)
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
        if (fault := await self._fault(name)) is not None:
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
        if (fault := await self._fault(name)) is not None:
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
        self._record("splunk", request, items, len(body))
        return web.json_response({"text": "Success", "code": 0})

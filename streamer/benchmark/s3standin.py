"""An S3 stand-in for the benchmark's second S3 phase: keeps connections open, as S3 does.

moto's server (werkzeug's) closes every connection after one request, so into moto each
PUT also pays a TCP connect and teardown on the worker's side, which S3 in production does
not charge: the moto phase overstates the worker's CPU per object. This server answers a
PUT of `/<bucket>/<key>` (path style, as the sink addresses an IP endpoint) the way S3 does
once it is satisfied, checking what is cheap to check: a SigV4 `Authorization` header, an
`X-Amz-Date`, and `X-Amz-Content-SHA256` equal to the body's SHA-256 (the sink signs the
payload). It records the keys it stored; it does not verify the signature itself (moto
does not either).
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from streamer.benchmark.receiver import serve


class S3StandIn:
    def __init__(self) -> None:
        self.port = 0
        self.keys: set[str] = set()
        self.puts = 0
        self.refused = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_put("/{bucket}/{key:.+}", self._put)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _put(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.puts += 1
        h = request.headers
        if (not h.get("Authorization", "").startswith("AWS4-HMAC-SHA256 Credential=") or "X-Amz-Date" not in h
                or h.get("X-Amz-Content-SHA256") != hashlib.sha256(body).hexdigest()):
            self.refused += 1
            return web.Response(status=403, content_type="application/xml",
                                text="<Error><Code>SignatureDoesNotMatch</Code><Message>stand-in</Message></Error>")
        self.keys.add(f"{request.match_info['bucket']}/{request.match_info['key']}")
        return web.Response(status=200, headers={"ETag": '"0"'})

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.keys) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        return len(self.keys) >= count

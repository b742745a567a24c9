"""A light Datadog-style log intake for the benchmark: checks the API key and the body shape
cheaply, answers 202, and counts the events it got by the token each carries (see
workload.py) with one regex over the request body, so it stays cheap next to the worker.

For an expected range of event sequence numbers it records which arrived (duplicates are
counted apart) and, when the event carries its send time, the end-to-end latency.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from array import array

from aiohttp import web

TOKEN = re.compile(rb"~(\d+)~(\d+)~")


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on a free loopback port, keeping connections open as providers do."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=300)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


class Receiver:
    def __init__(self, api_key: str):
        self.api_key = api_key
        self.port = 0
        self.requests = 0
        self.bad_requests = 0
        self._runner: web.AppRunner | None = None
        self.expect(0, 0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expect(self, first_seq: int, count: int) -> None:
        """Start counting the events first_seq .. first_seq + count - 1."""
        self.first = first_seq
        self.count = count
        self.arrived = bytearray(count)
        self.unique = 0
        self.duplicates = 0
        self.items = 0
        self.phase_requests = 0
        self.latencies_ns = array("q")
        self.first_ns: int | None = None
        self.done_ns: int | None = None
        self.done = asyncio.Event()
        if count == 0:
            self.done.set()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/dd/{name}/api/v2/logs", self._datadog)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _datadog(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("DD-API-KEY") != self.api_key:
            self.bad_requests += 1
            return web.json_response({"errors": ["bad api key"]}, status=403)
        body = await request.read()
        now = time.time_ns()
        if request.headers.get("Content-Encoding") == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        if body[:1] != b"[" or body[-1:] != b"]":
            self.bad_requests += 1
            return web.json_response({"errors": ["body must be a JSON array"]}, status=400)
        self.phase_requests += 1
        first, count, arrived = self.first, self.count, self.arrived
        for m in TOKEN.finditer(body):
            self.items += 1
            i = int(m[1]) - first
            if not 0 <= i < count:
                continue
            if arrived[i]:
                self.duplicates += 1
                continue
            arrived[i] = 1
            self.unique += 1
            sent = int(m[2])
            if sent:
                self.latencies_ns.append(now - sent)
        if self.first_ns is None:
            self.first_ns = now
        if self.unique >= count and not self.done.is_set():
            self.done_ns = now
            self.done.set()
        return web.json_response({}, status=202)

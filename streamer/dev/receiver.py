"""A local log receiver for the demo and docker compose: accepts Datadog-style batches,
Splunk envelopes or single JSON messages on any path, and keeps what it got."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import orjson
from aiohttp import web


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[str, object]] = []  # (path, message)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            data = orjson.loads(body)
            items = data if isinstance(data, list) else [data]
        except orjson.JSONDecodeError:
            items = [line.decode("utf-8", "replace") for line in body.splitlines() if line]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("message"), str):
                try:
                    item = orjson.loads(item["message"])
                except orjson.JSONDecodeError:
                    item = item["message"]
            self.received.append((request.path, item))
        status = 202 if request.path.endswith("/api/v2/logs") else 200
        return web.json_response({"text": "Success", "code": 0}, status=status)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def main() -> None:
    """Run standalone (docker compose's log-receiver): print each message as a JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args()

    async def run():
        # In a container this is pid 1, which gets no SIGTERM it does not handle: without
        # this, `docker compose down` waited its whole timeout and then killed it.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        r = Receiver()
        await r.start(args.host, args.port)
        print(f"log receiver listening on {args.host}:{r.port}", flush=True)
        seen = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
            for path, item in r.received[seen:]:
                print(json.dumps({"path": path, "message": item}), flush=True)
            seen = len(r.received)
        await r.stop()

    asyncio.run(run())


if __name__ == "__main__":
    main()

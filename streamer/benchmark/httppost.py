"""Client CPU per REST request: a bare aiohttp POST against the HTTP sink's, one delivery per
request, into a keep-alive loopback server in another process.

The pipeline's REST figure is the whole worker; this isolates what one request costs the
client, which with thousands of small destinations is paid about once per 1.7 events
(docs/performance.md). The bare POST is the floor for any sink built on aiohttp: the same
shared session, body and headers, no encoding, no SSRF resolver, no redaction. Measured with
`time.process_time()` (the server's CPU is its own process's), with the worker's garbage
collector settings (`streamer.gc_tuning`), 50 requests in flight,
medians of the passes (the two alternated) after a warm-up pass.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson

from streamer.benchmark import loop
from streamer.benchmark.s3put import wait_for_port


def run_httppost(requests: int, destinations: int, repeats: int, concurrency: int = 50) -> dict[str, Any]:
    from streamer.dev.local import free_port

    port = free_port()
    # s3put's stub: answers 200 to any request and keeps connections open, as providers do.
    server = subprocess.Popen([sys.executable, "-m", "streamer.benchmark.s3put", str(port)])
    try:
        wait_for_port(port)
        return loop.run(_main(f"http://127.0.0.1:{port}", requests, destinations, repeats, concurrency))
    finally:
        server.terminate()
        server.wait()


async def _main(base: str, requests: int, destinations: int, repeats: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    from streamer.sinks.base import Delivery
    from streamer.sinks.http.service import HttpSink

    dests = [{"type": "http", "provider": "generic", "url": f"{base}/intake/{i}",
              "headers": {"X-Tenant": f"t{i}"}} for i in range(destinations)]
    routed = [orjson.dumps(d) for d in dests]
    message = orjson.dumps({"id": "e", "pad": "x" * 900})

    def delivery(i: int) -> Delivery:
        return Delivery(f"workspace:{i % destinations}", routed[i % destinations], str(i % destinations), f"e{i}",
                        "job_summary", message)

    from streamer.config import Config
    from streamer.gc_tuning import tune_gc

    tune_gc(Config.model_fields["gc_gen0_threshold"].default)  # the collector as the worker runs it
    sink = HttpSink({}, allow_private=True, concurrency=4, timeout_s=10, trust_env=False)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=10, connect=5),
                                    cookie_jar=aiohttp.DummyCookieJar())
    failures = 0

    async def bare(i: int) -> None:
        nonlocal failures
        async with session.post(dests[i % destinations]["url"], data=message, allow_redirects=False,
                                headers={"Content-Type": "application/json", "X-Tenant": f"t{i}"}) as resp:
            await resp.read()
            failures += resp.status != 200

    async def through_sink(i: int) -> None:
        nonlocal failures
        [outcome] = await sink.send(dests[i % destinations], [delivery(i)])
        failures += not outcome.ok

    async def one_pass(send) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def go(i: int) -> None:
            async with gate:
                await send(i)
        await asyncio.gather(*(go(i) for i in range(requests)))

    out: dict[str, Any] = {"requests": requests, "destinations": destinations, "repeats": repeats,
                           "concurrency": concurrency, "body_bytes": len(message)}
    kinds = (("aiohttp_post", bare), ("http_sink", through_sink))
    cpu: dict[str, list[float]] = {name: [] for name, _ in kinds}
    try:
        for _name, send in kinds:
            await one_pass(send)  # warm-up: connections, destinations' headers
        for _ in range(repeats):  # alternated, so a drift of the machine hits both alike
            for name, send in kinds:
                c0 = time.process_time()
                await one_pass(send)
                cpu[name].append((time.process_time() - c0) / requests * 1e6)
        for name, runs in cpu.items():
            out[name] = {"cpu_us_per_request": statistics.median(runs), "cpu_us_per_request_runs": runs}
    finally:
        await session.close()
        await sink.close()
    out["failures"] = failures
    return out


def report(result: dict[str, Any]) -> str:
    return "\n".join([
        f"client CPU per request, {result['requests']:,} requests over {result['destinations']} destinations, "
        f"{result['concurrency']} in flight, {result['body_bytes']}-byte body, keep-alive loopback server; "
        f"medians of {result['repeats']}:",
        f"  aiohttp session.post (the floor)   {result['aiohttp_post']['cpu_us_per_request']:6.0f} µs",
        f"  HttpSink.send, one delivery        {result['http_sink']['cpu_us_per_request']:6.0f} µs",
        f"  failed requests: {result['failures']}",
    ])

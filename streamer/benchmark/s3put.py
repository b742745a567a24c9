"""Client CPU per S3 object: aiobotocore's `put_object` (what the S3 sink used to call) against
the sink's signed PUT (botocore signature, the lean transport of streamer/sinks/transport.py), into the same moto server, in this process.

The pipeline's S3 figure is the whole worker (Kafka, Faust, the engine) and is bounded by
moto's own speed on the same cores; this one is only the client side of one PUT, measured
with `time.process_time()` (moto runs in its own process, so its CPU is not counted).
Each pass is preceded by a warm-up pass that builds clients and resolves URLs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from streamer.benchmark import loop


def run_s3put(objects: int, destinations: int, repeats: int, size: int) -> dict[str, Any]:
    """Into moto, then into a trivial keep-alive server (see `_serve`)."""
    from streamer.dev.local import MotoS3, free_port

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamer-s3put-") as tmp:
        moto = MotoS3(Path(tmp) / "s3", free_port())
        moto.start()
        try:
            out["moto"] = loop.run(_main(moto.endpoint, objects, destinations, repeats, size, True))
        finally:
            moto.stop()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamer.benchmark.s3put", str(port)])
    try:
        wait_for_port(port)
        out["keepalive"] = loop.run(_main(f"http://127.0.0.1:{port}", objects, destinations, repeats, size,
                                             False))
    finally:
        server.terminate()
        server.wait()
    return out


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _serve(port: int) -> None:
    """A loopback server that answers 200 to every request and keeps connections open, as
    S3 does; moto (werkzeug's development server) closes every connection after one
    request, so into moto each PUT also pays a TCP connect and teardown."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, headers={"ETag": '"0"'})

    app = web.Application(client_max_size=1 << 26)
    app.router.add_route("*", "/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _main(endpoint: str, objects: int, destinations: int, repeats: int, size: int,
                make: bool) -> dict[str, Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from streamer.dev.harness import make_bucket
    from streamer.settings.secrets import encrypt
    from streamer.sinks.base import Delivery
    from streamer.sinks.s3.service import S3Sink

    keys = {"bench": os.urandom(32)}
    bucket = f"s3put-{uuid.uuid4().hex[:8]}"
    if make:
        await make_bucket(endpoint, bucket)
    dests = [{"type": "s3", "bucket": bucket, "endpoint_url": endpoint, "prefix": f"d{i}",
              "access_key_id": "testing", "secret_access_key": {"enc": encrypt("testing", keys, "partner/bench", "destination.secret_access_key")}}
             for i in range(destinations)]
    body = b'{"pad": "' + b"x" * max(0, size - 11) + b'"}'

    def batch(n: int, tag: str) -> list[tuple[int, list[Delivery]]]:
        per: dict[int, list[Delivery]] = {}
        for i in range(n):
            per.setdefault(i % destinations, []).append(
                Delivery("partner:bench", b"{}", "1", f"e{i}", "job_summary", body, object_key=f"{tag}/{i}.json"))
        return list(per.items())

    # -- aiobotocore put_object, one client per destination (as the sink had) --
    session = get_session()
    clients, exits = [], []
    for _ in dests:
        cm = session.create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                                   aws_access_key_id="testing", aws_secret_access_key="testing",
                                   config=AioConfig(retries={"max_attempts": 1}, max_pool_connections=16))
        clients.append(await cm.__aenter__())
        exits.append(cm)

    async def botocore_pass(tag: str) -> None:
        async def group(i: int, items: list[Delivery]) -> None:
            sem = asyncio.Semaphore(16)

            async def put(d: Delivery) -> None:
                async with sem:
                    await clients[i].put_object(Bucket=bucket, Key=d.object_key, Body=d.message,
                                                ContentType="application/json")
            await asyncio.gather(*(put(d) for d in items))
        await asyncio.gather(*(group(i, items) for i, items in batch(objects, tag)))

    sink = S3Sink(keys, None, 32, 10, allow_private=True)  # moto and the stub listen on loopback
    failures: list[str] = []

    async def sink_pass(tag: str) -> None:
        results = await asyncio.gather(*(sink.send(dests[i], items) for i, items in batch(objects, tag)))
        failed = [o for r in results for o in r if not o.ok]
        if failed:  # counted, not retried: the engine would retry them
            failures.append(f"{len(failed)} in {tag}, e.g. {failed[0].error}")

    out: dict[str, Any] = {"objects": objects, "destinations": destinations, "size": len(body), "repeats": repeats}
    try:
        for name, one_pass in (("aiobotocore_put_object", botocore_pass), ("sink_signed_lean_put", sink_pass)):
            await one_pass(f"{name}/warm")
            cpu, rate = [], []
            for r in range(repeats):
                c0, w0 = time.process_time(), time.perf_counter()
                await one_pass(f"{name}/{r}")
                c1, w1 = time.process_time(), time.perf_counter()
                cpu.append((c1 - c0) / objects * 1e6)
                rate.append(objects / (w1 - w0))
            out[name] = {"cpu_us_per_object": statistics.median(cpu), "objects_per_s": statistics.median(rate),
                         "cpu_us_per_object_runs": cpu}
        out["sink_failures"] = failures
    finally:
        for cm in exits:
            await cm.__aexit__(None, None, None)
        await sink.close()
    return out


def report(result: dict[str, Any]) -> str:
    lines = []
    for target, label in (("moto", "into moto (a new connection per PUT)"),
                          ("keepalive", "into a keep-alive loopback server answering 200")):
        r = result[target]
        lines.append(f"S3 PUT client cost {label}: {r['objects']:,} objects of {r['size']:,} bytes over "
                     f"{r['destinations']} destination(s), median of {r['repeats']} passes (this process's CPU)")
        for name in ("aiobotocore_put_object", "sink_signed_lean_put"):
            m = r[name]
            runs = ", ".join(f"{x:.0f}" for x in m["cpu_us_per_object_runs"])
            lines.append(f"  {name:24s} {m['cpu_us_per_object']:7.0f} µs CPU/object ({runs})   "
                         f"{m['objects_per_s']:6.0f} objects/s")
        if r.get("sink_failures"):
            lines.append(f"  sink PUTs that failed (not retried here): {r['sink_failures']}")
    return "\n".join(lines)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))

"""Before the Faust worker starts: can this worker connect to Kafka with its credentials?

Why: Faust handles a refused connection (wrong password, untrusted CA, missing ACL) by
crashing during start-up with "Unable to bootstrap", before its web server runs, so the
orchestrator sees a crash loop and the real cause is buried in a traceback. Here the worker
instead serves `/health` (200: the process is fine, do not restart it) and `/ready` (503
with the reason), logs the reason in one line, and tries again with backoff. The security
settings are read again on every attempt, so a rotated password in a mounted
`STREAMER_SASL_PASSWORD_FILE` is picked up without a restart. Once Kafka accepts it, this
server closes and the normal worker starts on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from streamer import topics as T
from streamer.config import Config
from streamer.kafka_client import Causes, KafkaConfigError, KafkaSecurity, explain

log = logging.getLogger("streamer.preflight")


async def check(cfg: Config, timeout_s: float = 15.0) -> str | None:
    """None if a client with this process's settings can bootstrap and see the settings
    table (which every worker must read), else the reason."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.errors import KafkaError

    try:
        sec = KafkaSecurity.from_env()
    except KafkaConfigError as e:
        return str(e)
    topic = cfg.topic(T.SETTINGS_TABLE)
    with Causes() as causes:
        c = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=int(timeout_s * 1000),
                             **sec.aiokafka())
        try:
            await asyncio.wait_for(c.start(), timeout_s)
            md = ClusterMetadata()
            await asyncio.wait_for(c._client._metadata_update(md, [topic]), timeout_s)
            if topic in md.unauthorized_topics:
                return explain(PermissionError(f"topic {topic} is not authorized for this principal"),
                               cfg.bootstrap_servers, sec)
            if not md.partitions_for_topic(topic):
                return f"topic {topic} does not exist at {cfg.bootstrap_servers}; run `streamer topics apply`"
            return None
        except (KafkaError, OSError, asyncio.TimeoutError) as e:
            return explain(e, cfg.bootstrap_servers, sec, causes.lines)
        finally:
            await c.stop()


async def wait_for_kafka(cfg: Config) -> bool:
    """Serve health and not-ready until Kafka accepts this worker; False if told to stop."""
    reason = await check(cfg)
    if reason is None:
        return True
    state = {"reason": reason, "since": time.time()}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def health(_request):
        return web.json_response({"status": "ok"})

    async def ready(_request):
        return web.json_response({"settings_ready": False, "broker_connected": False, "kafka_error": state["reason"]},
                                 status=503)

    async def prometheus(_request):
        # The same registry as the worker's: streamer_settings_ready is 0, so the not-ready
        # alert fires on this worker too instead of seeing a failed scrape.
        from prometheus_client import generate_latest

        from streamer import metrics

        return web.Response(body=generate_latest(metrics.REGISTRY), content_type="text/plain")

    server = web.Application()
    server.add_routes([web.get("/health", health), web.get("/ready", ready), web.get("/metrics", prometheus)])
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.web_host, cfg.web_port).start()
    delay = 2.0
    try:
        while True:
            log.error("not ready: %s; retrying in %.0fs", state["reason"], delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 30.0)
            reason = await check(cfg)
            if reason is None:
                log.info("Kafka accepts this worker now; starting")
                return True
            state["reason"] = reason
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(cfg: Config | None = None) -> bool:
    from logging.config import dictConfig

    from streamer.logs import logging_config

    cfg = cfg or Config.from_env()
    dictConfig(logging_config(cfg.log_level))
    return asyncio.run(wait_for_kafka(cfg))

"""The Faust application: agents are thin wiring around the pure modules.

  raw audit topics --route_events--> deliveries.s3 / deliveries.http (+ rejected)
  deliveries.s3    --deliver_s3----> S3            (+ retry / dead letter)
  deliveries.http  --deliver_http--> REST provider (+ retry / dead letter)
  deliveries.retry --retry_deliveries-> (same engines, when due)
  settings.commands --settings_commands--> settings table + results

Every agent acks a batch only after everything it carries is durably handed on; no agent
lets an exception escape, because Faust would ack the event it was processing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from typing import Any, Awaitable, Callable

import faust
import mode
from prometheus_client import generate_latest

import topics as T
from streamer import metrics
from streamer.batching import App, batches, overlapped
from streamer.config import Config
from streamer.gc_tuning import track_gc_time, tune_gc
from streamer.logs import logging_config
from streamer.routing import Routed, Skip, route
from streamer.events.parse import KIND_BY_TOPIC
from streamer.settings.processor import ReplayTarget, SettingsProcessor
from streamer.settings.rules import Policy
from streamer.settings.view import SettingsView
from streamer.sinks.base import Delivery, now_ms
from streamer.sinks.engine import DeliveryEngine, EngineConfig
from streamer.sinks.http.service import HttpSink
from streamer.sinks.s3.service import S3Sink

log = logging.getLogger("streamer")
cfg = Config.from_env()
BIG = 52 * 1024 * 1024

app = App(
    cfg.app_id,
    broker=f"kafka://{cfg.bootstrap_servers}",
    store="memory://",
    web_enabled=True,
    web_port=cfg.web_port,
    web_bind=cfg.web_host,
    web_host=cfg.web_host,
    datadir=cfg.data_dir,
    topic_allow_declare=False,  # topics are created by `streamer topics apply`, never by a worker
    topic_disable_leader=True,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    producer_max_request_size=BIG,
    producer_linger_ms=5,
    producer_acks=-1,
    # Per partition and fetch. The broker still returns a first record larger than this
    # (a 40 MB message passes, tested); it bounds how much a backlog buffers: peak RSS on a
    # 40,000-event backlog 382 -> 310 MB against 52 MB.
    consumer_max_fetch_size=4 * 1024 * 1024,
    # A worker killed with -9 keeps its partitions until the group notices: keep that short.
    broker_session_timeout=cfg.session_timeout_s,
    broker_heartbeat_interval=max(1.0, cfg.session_timeout_s / 4),
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    stream_buffer_maxsize=8192,
    stream_wait_empty=False,
    worker_redirect_stdouts=False,
    logging_config=logging_config(cfg.log_level),
)


def _topic(name: str, partitions: int | None = None) -> faust.TopicT:
    return app.topic(cfg.topic(name), value_serializer="raw", key_serializer="raw",
                     partitions=partitions or T.BY_NAME[name].partitions)


raw_topics = app.topic(*(cfg.topic(n) for n in T.RAW_TOPICS), value_serializer="raw", key_serializer="raw")
commands_topic = _topic(T.SETTINGS_COMMANDS)
s3_topic = _topic(T.DELIVERIES_S3)
http_topic = _topic(T.DELIVERIES_HTTP)
retry_topic = _topic(T.DELIVERIES_RETRY)
KIND_BY_PHYSICAL = {cfg.topic(t): k for t, k in KIND_BY_TOPIC.items()}
DELIVERY_TOPIC = {"s3": cfg.topic(T.DELIVERIES_S3), "http": cfg.topic(T.DELIVERIES_HTTP)}


# -- durable produce -------------------------------------------------------------------------

async def produce_all(records: list[tuple[str, bytes | None, bytes | None, list | None]]) -> list[Any]:
    """Send records and wait for every broker ack; resend what failed until it is acked.

    Never gives up: an offset must not be committed before its output is durable, so a
    broker outage stalls the pipeline instead of losing data.
    """
    results: list[Any] = [None] * len(records)
    todo = list(range(len(records)))
    delay = 0.5
    while todo:
        futs = []
        for i in todo:
            topic, key, value, headers = records[i]
            try:
                futs.append(await app.producer.send(topic, key, value, None, None, headers))
            except Exception as e:  # buffer full or producer restarting
                futs.append(_failed(e))
        outcomes = await asyncio.gather(*futs, return_exceptions=True)
        failed = []
        for i, out in zip(todo, outcomes):
            if isinstance(out, BaseException):
                failed.append(i)
            else:
                results[i] = out
        if failed:
            log.warning("%d of %d records not acked by the broker; resending in %.1fs",
                        len(failed), len(todo), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
        todo = failed
    return results


async def _failed(e: Exception):
    raise e


async def produce_one(topic: str, key: bytes | None, value: bytes | None, headers: list | None = None):
    return (await produce_all([(topic, key, value, headers)]))[0]


async def steadfast(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run `fn` until it succeeds. An unexpected error is logged and retried, never swallowed:
    the batch stays unacked, so it is processed again rather than lost."""
    delay = 1.0
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying in %.0fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)


# -- settings ---------------------------------------------------------------------------------

class SettingsViewService(mode.Service):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.view = SettingsView(cfg.bootstrap_servers, cfg.topic(T.SETTINGS_TABLE))

    async def on_start(self) -> None:
        await self.view.start()

    async def on_stop(self) -> None:
        await self.view.stop()

    @mode.Service.task
    async def _tune_gc_once_recovered(self) -> None:
        track_gc_time()
        await self.view.ready.wait()
        tune_gc(cfg.gc_gen0_threshold)


view_service = SettingsViewService()
view = view_service.view
app.service(view_service)

policy = Policy(signing_keys=cfg.signing_keys, encryption_keys=cfg.encryption_keys,
                allow_private_destinations=cfg.allow_private_destinations,
                command_max_age_s=cfg.command_max_age_s)
processor = SettingsProcessor(view, produce_one, policy, cfg.topic(T.SETTINGS_TABLE),
                              cfg.topic(T.SETTINGS_RESULTS),
                              ReplayTarget(cfg.bootstrap_servers, cfg.topic(T.DEAD_LETTERS), DELIVERY_TOPIC, produce_all))


@app.agent(commands_topic)
async def settings_commands(stream):
    async for events in batches(stream, 100, 0.05):
        for event in events:
            result = await steadfast("settings command",
                                     lambda: processor.handle(event.message.value, event.message.offset, int(event.message.timestamp * 1000)))
            metrics.settings_commands.labels(result["status"]).inc()


# -- routing ----------------------------------------------------------------------------------

async def route_batch(events) -> None:
    state = view.state
    out: list[tuple[str, bytes | None, bytes | None, list | None]] = []
    # Counted per batch, not per event: a labelled counter increment costs a lock each.
    consumed: Counter = Counter()
    routed: Counter = Counter()
    skipped: Counter = Counter()
    for event in events:
        msg = event.message
        kind = KIND_BY_PHYSICAL[msg.topic]
        consumed[kind] += 1
        result = route(state, kind, msg.value, msg.key, cfg.max_message_bytes, int(msg.timestamp * 1000))
        if isinstance(result, Routed):
            out.append((DELIVERY_TOPIC[result.delivery_type], result.key, result.value, result.headers))
            routed[kind, result.delivery_type] += 1
        elif isinstance(result, Skip):
            skipped[kind, result.reason] += 1
        else:
            out.append((cfg.topic(T.REJECTED), msg.key, msg.value, [
                ("reason", result.reason.encode()), ("source_topic", msg.topic.encode()),
                ("source_partition", str(msg.partition).encode()), ("source_offset", str(msg.offset).encode()),
                ("kind", kind.encode())]))
            metrics.events_rejected.labels(kind).inc()
            log.info("rejected %s record %s/%d@%d: %s", kind, msg.topic, msg.partition, msg.offset,
                     result.reason, extra={"kind": kind})
    if out:
        await produce_all(out)
    for kind, n in consumed.items():
        metrics.events_consumed.labels(kind).inc(n)
    for labels, n in routed.items():
        metrics.events_routed.labels(*labels).inc(n)
    for labels, n in skipped.items():
        metrics.events_skipped.labels(*labels).inc(n)


@app.agent(raw_topics)
async def route_events(stream):
    await view.ready.wait()
    await overlapped(stream, cfg.batch_max, cfg.batch_linger_s,
                     lambda events: steadfast("routing", lambda: route_batch(events)), cfg.batches_in_flight)


# -- delivery ---------------------------------------------------------------------------------

engine_cfg = EngineConfig(
    retry_topic=cfg.topic(T.DELIVERIES_RETRY), dead_letter_topic=cfg.topic(T.DEAD_LETTERS),
    inline_retries=cfg.inline_retries, retry_base_s=cfg.retry_base_s, retry_max_backoff_s=cfg.retry_max_backoff_s,
    retry_horizon_s=cfg.retry_horizon_s, deadline_s=cfg.delivery_deadline_s, breaker_failures=cfg.breaker_failures,
    breaker_reset_s=cfg.breaker_reset_s, destination_concurrency=cfg.destination_concurrency)


engines = {
    "s3": DeliveryEngine("s3", S3Sink(cfg.encryption_keys, cfg.s3_endpoint_url, 16, cfg.http_timeout_s),
                         produce_all, engine_cfg),
    "http": DeliveryEngine("http", HttpSink(cfg.encryption_keys, cfg.allow_private_destinations,
                                            cfg.destination_concurrency, cfg.http_timeout_s),
                           produce_all, engine_cfg),
}


async def deliver(kind: str, events) -> None:
    batch = [Delivery.from_record(e.message.key, e.message.value, e.message.headers) for e in events]
    await steadfast(f"{kind} delivery", lambda: engines[kind].process([d for d in batch if not d.settled]))


@app.agent(s3_topic)
async def deliver_s3(stream):
    await overlapped(stream, cfg.batch_max, cfg.batch_linger_s, lambda events: deliver("s3", events),
                     cfg.batches_in_flight)


@app.agent(http_topic)
async def deliver_http(stream):
    await overlapped(stream, cfg.batch_max, cfg.batch_linger_s, lambda events: deliver("http", events),
                     cfg.batches_in_flight)


@app.agent(retry_topic)
async def retry_deliveries(stream):
    """Parked deliveries, re-attempted when due. Newer deliveries never wait here: they have
    their own topics; this agent only holds back retries that are not due yet."""
    async for events in batches(stream, cfg.batch_max, cfg.batch_linger_s):
        waiting = sorted(((int(dict(e.message.headers).get("next", b"0")), e) for e in events),
                         key=lambda p: p[0])
        while waiting:
            now = now_ms()
            due = [e for t, e in waiting if t <= now]
            waiting = [(t, e) for t, e in waiting if t > now]
            if not due:
                await asyncio.sleep(min(5.0, (waiting[0][0] - now) / 1000))
                continue
            by_type: dict[str, list[Delivery]] = defaultdict(list)
            for e in due:
                by_type[dict(e.message.headers).get("type", b"http").decode()].append(
                    Delivery.from_record(e.message.key, e.message.value, e.message.headers))
            for kind, batch in by_type.items():
                await steadfast("retry delivery",
                                lambda: engines[kind].process([d for d in batch if not d.settled]))


# -- health and metrics ------------------------------------------------------------------------

@app.page("/health")
async def health(web, request):
    return web.json({"status": "ok"})


@app.page("/ready")
async def ready(web, request):
    fresh = view.last_fetch is not None and time.monotonic() - view.last_fetch < 15
    body = {"settings_ready": view.ready.is_set(), "broker_connected": fresh, "settings_version": view.state.version,
            "settings_rows_recovered": view.recovered_rows, "recovery_seconds": view.recovery_seconds}
    return web.json(body, status=200 if view.ready.is_set() and fresh else 503)


@app.page("/settings")
async def settings_status(web, request):
    """This worker's view of the settings: version and a digest, never the settings themselves."""
    state = view.state
    return web.json({"ready": view.ready.is_set(), "version": state.version, "workspaces": len(state.workspaces),
                     "partner_configs": len(state.partners), "digest": state.digest()})


@app.page("/metrics")
async def prometheus(web, request):
    state = view.state
    metrics.settings_version.set(state.version)
    metrics.settings_workspaces.set(len(state.workspaces))
    metrics.settings_partners.set(len(state.partners))
    metrics.settings_ready.set(1 if view.ready.is_set() else 0)
    try:
        consumer = app.consumer
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            pos = consumer._read_offset.get(tp)
            if hw is not None:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - (pos + 1 if pos is not None else 0)))
    except Exception:  # lag is best effort; a rebalance in progress has no assignment
        pass
    return web.bytes(generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4")


def run_worker(loglevel: str | None = None) -> None:
    import os
    import threading

    from faust.worker import Worker

    class GracefulWorker(Worker):
        """On SIGTERM Faust stops fetching, stops the agents and commits what was acked; a
        batch still in flight is not acked, so it is processed again after the restart
        (at least once). The watchdog bounds the whole shutdown by the grace period."""

        def _on_sigterm(self) -> None:
            def expire() -> None:
                log.error("shutdown exceeded the %.0fs grace period; exiting", cfg.shutdown_grace_s)
                os._exit(1)

            timer = threading.Timer(cfg.shutdown_grace_s, expire)
            timer.daemon = True
            timer.start()
            super()._on_sigterm()

    GracefulWorker(app, loglevel=loglevel or cfg.log_level, logging_config=logging_config(loglevel or cfg.log_level),
           redirect_stdouts=False).execute_from_commandline()

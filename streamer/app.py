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
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from typing import Any, Awaitable, Callable

import faust
import mode
from prometheus_client import generate_latest

from streamer import topics as T
from streamer import metrics
from streamer.batching import RawSchema, batches, overlapped
from streamer.isolation import isolated
from streamer.liveness import Liveness
from streamer.produce import DurableProducer, Refused, cut_down
from streamer.retry_schedule import scheduled
from streamer.config import Config
from streamer.faust_app import new_app, run
from streamer.gc_tuning import track_gc_time, tune_gc
from streamer.routing import Routed, Skip, route_safely
from streamer.events.parse import KIND_BY_TOPIC
from streamer.settings.processor import ReplayTarget, SettingsProcessor
from streamer.settings.rules import Policy
from streamer.settings.view import SettingsView
from streamer.sinks.azure_blob.service import AzureBlobSink
from streamer.sinks.azure_monitor.service import AzureMonitorSink
from streamer.sinks.base import Delivery, now_ms
from streamer.sinks.engine import DeliveryEngine, EngineConfig
from streamer.sinks.gcs.service import GcsSink
from streamer.sinks.http.service import HttpSink
from streamer.sinks.s3.service import S3Sink
from streamer.sinks.testing import TestReport, run_test
from streamer.notifications import DestinationNotification, ms_to_datetime
from streamer.status import StatusBook, notices, notified_row, row_key
from streamer.status_io import StatusTail

log = logging.getLogger("streamer")
cfg = Config.from_env()
liveness = Liveness()
app = new_app(cfg)


def _topic(name: str, partitions: int | None = None) -> faust.TopicT:
    return app.topic(cfg.topic(name), schema=RawSchema(), partitions=partitions or T.BY_NAME[name].partitions)


raw_topics = app.topic(*(cfg.topic(n) for n in T.RAW_TOPICS), schema=RawSchema())
commands_topic = _topic(T.SETTINGS_COMMANDS)
s3_topic = _topic(T.DELIVERIES_S3)
http_topic = _topic(T.DELIVERIES_HTTP)
retry_topic = _topic(T.DELIVERIES_RETRY)
KIND_BY_PHYSICAL = {cfg.topic(t): k for t, k in KIND_BY_TOPIC.items()}
# Object stores share the S3 delivery topic, log APIs the HTTP one; the record's `type`
# header picks the engine (README, Decisions: delivery topics).
DELIVERY_TOPIC = {"s3": cfg.topic(T.DELIVERIES_S3), "http": cfg.topic(T.DELIVERIES_HTTP),
                  "azure_blob": cfg.topic(T.DELIVERIES_S3), "gcs": cfg.topic(T.DELIVERIES_S3),
                  "azure_monitor": cfg.topic(T.DELIVERIES_HTTP)}


# -- durable produce -------------------------------------------------------------------------

async def _send(topic: str, key: bytes | None, value: bytes | None, headers: list | None):
    return await app.producer.send(topic, key, value, None, None, headers)


# One producer for every agent, so one byte budget: no produce request can exceed what the
# broker accepts, however the agents' large records meet (see streamer/produce.py).
producer = DurableProducer(_send, cfg.produce_max_inflight_bytes)
produce_all = producer.send_all  # per record: metadata or Refused
produce_durably = producer.send_durably  # small records built here; a refusal is a bug


async def produce_one(topic: str, key: bytes | None, value: bytes | None, headers: list | None = None):
    return (await produce_durably([(topic, key, value, headers)]))[0]


async def steadfast(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run `fn` until it succeeds, for work that is not about one record (a settings
    command's own errors become its rejection): the batch stays unacked and is retried."""
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
        track_gc_time()
        # Before the table is read: recovering a million workspaces allocates tens of
        # millions of objects, and young collections every 700 of them, each promoting
        # what they find into full collections of everything read so far, cost about 5
        # of its 30 s (docs/performance.md, Fifth round).
        tune_gc(cfg.gc_gen0_threshold)
        await self.view.start()

    async def on_stop(self) -> None:
        await self.view.stop()

    @mode.Service.task
    async def _tune_gc_once_recovered(self) -> None:
        await self.view.ready.wait()
        tune_gc(cfg.gc_gen0_threshold)  # again: the recovered settings are frozen too


view_service = SettingsViewService()
view = view_service.view
app.service(view_service)

policy = Policy(signing_keys=cfg.signing_keys, encryption_keys=cfg.encryption_keys,
                allow_private_destinations=cfg.allow_private_destinations,
                command_max_age_s=cfg.command_max_age_s)
processor = SettingsProcessor(view, produce_one, policy, cfg.topic(T.SETTINGS_TABLE),
                              cfg.topic(T.SETTINGS_RESULTS),
                              ReplayTarget(cfg.bootstrap_servers, cfg.topic(T.DEAD_LETTERS), DELIVERY_TOPIC, produce_durably),
                              tester=lambda target, command_id: test_destination(target, command_id))


@app.agent(commands_topic)
async def settings_commands(stream):
    async for events in batches(stream, 100, 0.05):
        for event in events:
            result = await steadfast("settings command",
                                     lambda: processor.handle(event.message.value, event.message.offset, int(event.message.timestamp * 1000)))
            metrics.settings_commands.labels(result["status"]).inc()


# -- routing ----------------------------------------------------------------------------------

def rejected_record(msg, kind: str, reason: str) -> tuple[str, bytes | None, bytes | None, list]:
    """The rejected copy of a raw record: its original bytes, where it came from and why."""
    return (cfg.topic(T.REJECTED), msg.key, msg.value, [
        ("reason", reason.encode()), ("source_topic", msg.topic.encode()),
        ("source_partition", str(msg.partition).encode()), ("source_offset", str(msg.offset).encode()),
        ("kind", kind.encode())])


async def reject(events_and_reasons: list[tuple[Any, str]]) -> None:
    """Durably write rejected copies; one the broker refuses (a value just under the raw
    topic's limit is over it once the headers are added) is cut down so that it fits."""
    records = []
    for event, reason in events_and_reasons:
        msg = event.message
        kind = KIND_BY_PHYSICAL.get(msg.topic, "unknown")
        records.append(rejected_record(msg, kind, reason))
        metrics.events_rejected.labels(kind).inc()
        log.info("rejected %s record %s/%d@%d: %s", kind, msg.topic, msg.partition, msg.offset, reason,
                 extra={"kind": kind})
    results = await produce_all(records)
    cut = [cut_down(rec, r.reason) for rec, r in zip(records, results) if isinstance(r, Refused)]
    if cut:
        await produce_durably(cut)


async def route_batch(events) -> None:
    state = view.state
    out: list[tuple[str, bytes | None, bytes | None, list | None]] = []
    sources = []  # the raw event of each record in `out`
    rejected: list[tuple[Any, str]] = []
    # Counted per batch, not per event: a labelled counter increment costs a lock each.
    consumed: Counter = Counter()
    routed: Counter = Counter()
    skipped: Counter = Counter()
    for event in events:
        msg = event.message
        kind = KIND_BY_PHYSICAL[msg.topic]
        consumed[kind] += 1
        result = route_safely(state, kind, msg.value, msg.key, cfg.max_message_bytes, int(msg.timestamp * 1000))
        if isinstance(result, Routed):
            out.append((DELIVERY_TOPIC[result.delivery_type], result.key, result.value, result.headers))
            sources.append(event)
            routed[kind, result.delivery_type] += 1
        elif isinstance(result, Skip):
            skipped[kind, result.reason] += 1
        else:
            rejected.append((event, result.reason))
    if out:
        results = await produce_all(out)
        for event, r in zip(sources, results):
            if isinstance(r, Refused):  # the delivery record itself cannot be written
                rejected.append((event, f"delivery record refused: {r.reason}"))
    if rejected:
        await reject(rejected)
    for kind, n in consumed.items():
        metrics.events_consumed.labels(kind).inc(n)
    for labels, n in routed.items():
        metrics.events_routed.labels(*labels).inc(n)
    for labels, n in skipped.items():
        metrics.events_skipped.labels(*labels).inc(n)


async def _reject_poison(event, reason: str) -> None:
    await reject([(event, reason)])


@app.agent(raw_topics)
async def route_events(stream):
    await view.ready.wait()
    await overlapped(stream, cfg.batch_max, cfg.batch_linger_s,
                     lambda events: isolated("routing", events, route_batch, _reject_poison),
                     cfg.batches_in_flight, cfg.batch_max_bytes, liveness.progress("route_events"))


# -- delivery ---------------------------------------------------------------------------------

engine_cfg = EngineConfig(
    retry_topic=cfg.topic(T.DELIVERIES_RETRY), dead_letter_topic=cfg.topic(T.DEAD_LETTERS),
    inline_retries=cfg.inline_retries, retry_base_s=cfg.retry_base_s, retry_max_backoff_s=cfg.retry_max_backoff_s,
    retry_horizon_s=cfg.retry_horizon_s, deadline_s=cfg.delivery_deadline_s, breaker_failures=cfg.breaker_failures,
    breaker_reset_s=cfg.breaker_reset_s, destination_concurrency=cfg.destination_concurrency)
# Sinks that put many records in one request linger for more; the object stores write one
# object per record, so waiting would gain them nothing.
batching_cfg = dataclasses.replace(engine_cfg, linger_s=cfg.destination_linger_s)


# Per-destination status (streamer/status.py): the engines report to it, a timer publishes
# it. The worker id is unique per run, so a restarted worker never resets another row.
worker_id = f"{cfg.instance_id or socket.gethostname()}-{os.getpid()}-{int(time.time())}".replace("/", "_")
status_book = StatusBook(worker_id, cfg.status_interval_s, cfg.status_counters_interval_s)

engines = {
    "s3": DeliveryEngine("s3", S3Sink(cfg.encryption_keys, cfg.s3_endpoint_url, cfg.s3_destination_concurrency,
                                        cfg.http_timeout_s, allow_private=cfg.allow_private_destinations),
                         produce_all, engine_cfg, produce_durably),
    "http": DeliveryEngine("http", HttpSink(cfg.encryption_keys, cfg.allow_private_destinations,
                                            cfg.destination_concurrency, cfg.http_timeout_s),
                           produce_all, batching_cfg, produce_durably),
    "azure_blob": DeliveryEngine("azure_blob", AzureBlobSink(cfg.encryption_keys, cfg.allow_private_destinations,
                                                             cfg.destination_concurrency, cfg.http_timeout_s),
                                 produce_all, engine_cfg, produce_durably),
    "gcs": DeliveryEngine("gcs", GcsSink(cfg.encryption_keys, cfg.allow_private_destinations,
                                         cfg.destination_concurrency, cfg.http_timeout_s),
                          produce_all, engine_cfg, produce_durably),
    "azure_monitor": DeliveryEngine("azure_monitor", AzureMonitorSink(cfg.encryption_keys, cfg.allow_private_destinations,
                                                                      cfg.destination_concurrency, cfg.http_timeout_s),
                                    produce_all, batching_cfg, produce_durably),
}
for _engine in engines.values():
    _engine.observer = status_book


async def test_destination(target, command_id: str):
    """A test command's write or probe through the real sink (not the engine: a test must
    not trip the breaker, park or dead-letter); see streamer/sinks/testing.py."""
    engine = engines.get(target.destination_type)
    if engine is None:
        return TestReport(target.destination_type, False, False, None,
                          f"unknown destination type {target.destination_type!r}")
    return await run_test(engine.sink, target, command_id, cfg.http_timeout_s + 5)


async def _dead_letter_unreadable(event, reason: str) -> None:
    """A record on a delivery topic that is not a delivery record (written by something
    other than streamer): to the dead-letter topic as it is, with the reason."""
    msg = event.message
    record = (cfg.topic(T.DEAD_LETTERS), msg.key, msg.value,
              [*(msg.headers or ()), ("err", reason[:2000].encode()), ("dead", str(now_ms()).encode())])
    results = await produce_all([record])
    if isinstance(results[0], Refused):
        await produce_durably([cut_down(record, results[0].reason)])
    log.error("unreadable delivery record %s/%d@%d dead-lettered: %s", msg.topic, msg.partition, msg.offset, reason)


async def deliver(destination_type: str, events) -> None:
    """Deliver a batch; a delivery that makes the engine raise is dead-lettered on its own
    with the reason, and the rest goes on. Settled deliveries are never sent again."""
    batch = []
    for e in events:
        try:
            batch.append(Delivery.from_record(e.message.key, e.message.value, e.message.headers))
        except Exception as exc:  # noqa: BLE001 - malformed headers: the reason goes with it
            await _dead_letter_unreadable(e, f"not a delivery record: {type(exc).__name__}: {exc}")
    engine = engines.get(destination_type)
    if engine is None:
        for e in events:
            await _dead_letter_unreadable(e, f"unknown destination type {destination_type!r}")
        return

    first = True

    async def handle(deliveries) -> None:
        # Only the first try joins other batches' groups: a batch tried again after a
        # failure, and each record isolated from it, goes alone (streamer/isolation.py).
        nonlocal first
        linger, first = first, False
        await engine.process([d for d in deliveries if not d.settled], linger=linger)

    async def poison(d: Delivery, reason: str) -> None:
        if not d.settled:
            await engine.dead_letter([d], reason)

    await isolated(f"{destination_type} delivery", batch, handle, poison)


@app.agent(s3_topic)
async def deliver_s3(stream):
    await overlapped(stream, cfg.batch_max, cfg.batch_linger_s, lambda events: deliver_by_type(events, "s3"),
                     cfg.batches_in_flight, cfg.batch_max_bytes, liveness.progress("deliver_s3"))


@app.agent(http_topic)
async def deliver_http(stream):
    # Lingering batches wait on their destinations' linger, not on the CPU: with only the
    # usual two in flight the worker sat idle and lingering cost throughput (docs/performance.md,
    # Sixth round). More of them, within the usual bytes, let later batches join the groups.
    lingering = cfg.destination_linger_s > 0
    await overlapped(stream, cfg.batch_max, cfg.batch_linger_s, lambda events: deliver_by_type(events, "http"),
                     cfg.linger_batches_in_flight if lingering else cfg.batches_in_flight, cfg.batch_max_bytes,
                     liveness.progress("deliver_http"),
                     max_inflight_bytes=cfg.batches_in_flight * cfg.batch_max_bytes if lingering else None)


async def deliver_by_type(events, default: str) -> None:
    """A batch of one topic, to each record's engine (its `type` header; records written
    before the header existed are the topic's own type)."""
    by_type: dict[bytes, list] = defaultdict(list)
    fallback = default.encode()
    for e in events:
        found = _type_header(e.message.headers)
        by_type[fallback if found is None else found].append(e)
    for destination_type, group in by_type.items():
        await deliver(destination_type.decode("utf-8", "replace"), group)


def _type_header(headers) -> bytes | None:
    """The last `type` header, as dict(headers) would give it, without building the dict."""
    found = None
    for name, value in headers or ():
        if name == "type":
            found = value
    return found


async def redeliver(events) -> None:
    await deliver_by_type(events, "http")


@app.agent(retry_topic)
async def retry_deliveries(stream):
    """Parked deliveries, re-attempted when due, each on its own clock (see
    streamer/retry_schedule.py). Newer deliveries never wait here: they have their own topics."""
    await scheduled(stream, redeliver, cfg.batch_max, cfg.batch_max_bytes, cfg.retry_hold_max_bytes,
                    liveness.progress("retry_deliveries"))


# -- destination status and notifications ------------------------------------------------------

@app.timer(interval=1.0)
async def publish_status() -> None:
    """This worker's changed status rows, at most every STREAMER_STATUS_INTERVAL_S per
    destination. A failed publish is retried on the next tick (the rows stay changed)."""
    rows = status_book.due()
    if rows:
        topic = cfg.topic(T.DESTINATION_STATUS)
        try:
            await produce_durably([(topic, row_key(r), r.to_json(), None) for r in rows])
        except Exception:
            log.exception("status publish failed; retrying on the next tick")
            status_book.retry(rows)


class StatusTailService(mode.Service):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tail = StatusTail(cfg.bootstrap_servers, cfg.topic(T.DESTINATION_STATUS))

    async def on_start(self) -> None:
        await self.tail.start()

    async def on_stop(self) -> None:
        await self.tail.stop()


status_tail = StatusTailService()
app.service(status_tail)


def _holds_commands() -> bool:
    """The notifier is the worker that holds the one commands partition: exactly one worker
    at a time (a rebalance may briefly overlap two, so a mailer should dedupe on the id)."""
    try:
        return any(tp.topic == commands_topic.get_topic_name() for tp in app.consumer.assignment())
    except Exception:
        return False


@app.timer(interval=1.0)
async def notify() -> None:
    """Announce destinations that started failing or recovered (streamer/status.py: notices)."""
    try:
        await _notify()
    except Exception:  # retried on the next tick: the state change is still there
        log.exception("notification round failed")


async def _notify() -> None:
    tail = status_tail.tail
    if not tail.caught_up.is_set() or not _holds_commands():
        metrics.destinations_failing.set(0)
        return
    now = now_ms()
    merged = tail.table.merged(now)
    metrics.destinations_failing.set(sum(1 for m in merged.values() if m.state == "failing"))
    found = notices(tail.table, now, cfg.notify_min_interval_s, merged)
    if not found:
        return
    records = []
    for n in found:
        kind, _, ident = n.destination_id.partition(":")
        ws = n.workspace_id or (ident if kind == "workspace" else "")
        entry = view.state.workspaces.get(ws)
        partner = ident if kind == "partner" else (entry.partner_id if entry else None)
        event = DestinationNotification(
            id=uuid.uuid4().hex, state=n.state, destination_id=n.destination_id,
            scope="partner" if kind == "partner" else "workspace", workspace_id=ws or None, partner_id=partner,
            reason=n.reason, status=n.status, since=ms_to_datetime(n.since_ms), at=ms_to_datetime(now))
        records.append((cfg.topic(T.NOTIFICATIONS), n.destination_id.encode(), event.model_dump_json().encode(), None))
        key, value = notified_row(n, merged.get(n.destination_id), now)
        records.append((cfg.topic(T.DESTINATION_STATUS), key, value, None))
        log.warning("destination %s %s: %s", n.destination_id, n.state, n.reason,
                    extra={"destination_id": n.destination_id})
    # The notification first, then the record of it: a crash in between repeats it (at least
    # once), never skips it.
    await produce_durably(records)
    for n in found:
        metrics.notifications.labels(n.state).inc()
    for topic, key, value, _ in records:
        if topic == cfg.topic(T.DESTINATION_STATUS):
            tail.table.apply(key, value)  # at once: the next tick must not announce it again


# -- health and metrics ------------------------------------------------------------------------

@app.page("/health")
async def health(web, request):
    """Liveness (the Deployment's livenessProbe): 503 once an agent has had a batch in
    flight longer than STREAMER_LIVENESS_STALL_S, so the pod is restarted."""
    live, body = liveness.report(cfg.liveness_stall_s)
    return web.json({"status": "ok" if live else "stalled", **body}, status=200 if live else 503)


@app.page("/live")
async def live(web, request):
    return await health(web, request)


group = {"joined": False, "partitions": 0}


@app.on_partitions_assigned.connect
async def _on_assigned(app, assigned, **kwargs) -> None:
    group["joined"], group["partitions"] = True, len(assigned)


@app.page("/ready")
async def ready(web, request):
    """Ready once the settings are read in full, the broker answers, and the worker has
    joined its consumer group (received an assignment). An empty assignment counts: with
    more workers than partitions a worker is a hot standby, and a rollout must not wait on it."""
    fresh = view.last_fetch is not None and time.monotonic() - view.last_fetch < 15
    body = {"settings_ready": view.ready.is_set(), "broker_connected": fresh, "settings_version": view.state.version,
            "settings_rows_recovered": view.recovered_rows, "recovery_seconds": view.recovery_seconds,
            "group_joined": group["joined"], "partitions_assigned": group["partitions"]}
    ok = view.ready.is_set() and fresh and group["joined"]
    return web.json(body, status=200 if ok else 503)


@app.page("/settings")
async def settings_status(web, request):
    """This worker's view of the settings: version and a digest, never the settings themselves."""
    state = view.state
    return web.json({"ready": view.ready.is_set(), "version": state.version, "workspaces": len(state.workspaces),
                     "partner_configs": len(state.partners), "digest": state.digest()})


@app.page("/metrics")
async def prometheus(web, request):
    state = view.state
    metrics.worker.info({"event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]})
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
    run(app, cfg, loglevel)

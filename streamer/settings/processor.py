"""Applies settings commands: decide (pure), write the table row, wait until it is in force
here, then publish the result. One worker at a time runs this (the commands topic has one
partition), so commands apply in one total order.

Every record on the commands topic gets exactly one result, however broken it is: a
command that makes anything here raise is answered as rejected with the exception as the
reason, never retried, because a record that is retried forever would stop every later
command (and so every tenant's settings changes). Only cancellation propagates; a broker
that does not take a record is the injected `send`'s business (it retries by itself).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import orjson

from streamer.dlq import iter_dead_letters

REPLAY_CHUNK = 500  # dead letters sent per durable send during a replay
REPLAY_CHUNK_BYTES = 32 * 1024 * 1024
from streamer.settings.rules import Decision, Policy, authenticate, command_id_of, cutoff, decide, scope_of
from streamer.settings.secrets import decrypt, redact
from streamer.settings.state import SeenCommand
from streamer.settings.urls import resolve_hosts, urls_in
from streamer.settings.view import SettingsView
from streamer.sinks.base import Delivery

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes | None], Awaitable[Any]]  # (topic, key, value) -> RecordMetadata
# A test command's check through the real sink: (target, command id) -> a report with what
# was done, whether it worked, the provider's status and the reason (streamer/sinks/testing.py).
Tester = Callable[[Any, str], Awaitable[Any]]
SendMany = Callable[[list[tuple[str, bytes, bytes, list]]], Awaitable[Any]]  # durable, all acked


@dataclass
class ReplayTarget:
    """Where dead letters are read from and sent back to, for replay commands."""

    bootstrap_servers: str
    dead_letter_topic: str
    delivery_topics: dict[str, str]  # destination type -> delivery topic
    send_many: SendMany


class SettingsProcessor:
    def __init__(self, view: SettingsView, send: Send, policy: Policy, table_topic: str, results_topic: str,
                 replay: ReplayTarget | None = None, tester: Tester | None = None):
        self.view, self.send, self.policy = view, send, policy
        self.table_topic, self.results_topic = table_topic, results_topic
        self.replay = replay
        self._clock_ms: int | None = None  # the latest command record time seen (see _record_time)
        self.tester = tester

    async def handle(self, raw: bytes | None, offset: int, timestamp_ms: int | None = None) -> dict[str, Any]:
        """Apply one command record and publish its one result. `timestamp_ms`: the record's
        broker timestamp, which the command's issued_at is judged against."""
        published = False
        result: dict[str, Any] | None = None
        try:
            await self.view.caught_up()
            now = datetime.now(timezone.utc)
            at = self._record_time(timestamp_ms, now)
            resolved = None
            if not self.policy.allow_private_destinations:
                # Looked up only for a signed, well-formed command: nobody else can make
                # this worker resolve names (or wait on a slow resolver).
                _cid, cmd, _reason = authenticate(raw or b"", self.policy)
                if cmd is not None:
                    scope = scope_of(cmd) or ""
                    resolved = await resolve_hosts(urls_in(
                        cmd.model_dump(mode="json"),
                        lambda env, field: decrypt(env, self.policy.encryption_keys, scope, field, allow_v1=False)))
            decision = decide(self.view.state, raw or b"", offset, self.policy, at, resolved)
            cmd_row = None
            if decision.previous_result is not None:
                result = decision.previous_result
            else:
                result, cmd_row = await self._apply(decision, offset, now)
            await self._publish(decision.command_id, result, cmd_row)
            published = True
            await self._expire_seen(at)
            return result
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("settings command at offset %d could not be processed", offset, exc_info=True,
                      extra={"offset": offset})
            if published:
                return result
            result = {"command_id": _command_id(raw), "status": "rejected",
                      "reason": f"command could not be processed: {type(e).__name__}: {e}"[:1000],
                      "warning": None, "settings_version": max(self.view.state.version, 0),
                      "processed_at": datetime.now(timezone.utc).isoformat(), "offset": offset}
            await self._publish(result["command_id"], result)
            return result

    def _record_time(self, timestamp_ms: int | None, now: datetime) -> datetime:
        """The time a command is judged fresh against: its record's broker timestamp (the
        commands topic appends with LogAppendTime), never later than this worker's clock and
        never earlier than a record time already seen here (record times only move forward;
        a record claiming an older one, possible where the topic keeps producers' CreateTime,
        cannot pass an old command off as fresh)."""
        if timestamp_ms is None:
            return now
        ms = min(int(timestamp_ms), int(now.timestamp() * 1000))
        if self._clock_ms is not None:
            ms = max(ms, self._clock_ms)
        self._clock_ms = ms
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)

    async def _publish(self, command_id: str, result: dict[str, Any], cmd_row: bytes | None = None) -> None:
        publish = self.send(self.results_topic, command_id.encode(), orjson.dumps(result))
        if cmd_row is None:
            await publish
        else:
            await asyncio.gather(self.send(self.table_topic, f"cmd/{command_id}".encode(), cmd_row), publish)
        log.info("settings command %s %s%s", result["command_id"], result["status"],
                 f": {result['reason']}" if result.get("reason") else "",
                 extra={"command_id": result["command_id"], "status": result["status"]})

    async def _apply(self, d: Decision, offset: int, now: datetime) -> tuple[dict[str, Any], bytes | None]:
        """(result, the `cmd/<id>` row still to be written with the result, or None)."""
        version = None
        last = None
        if d.row_key is not None and not d.already_applied:
            md = await self.send(self.table_topic, d.row_key, orjson.dumps(d.row_value))
            version = last = md.offset
        result = {"command_id": d.command_id, "status": d.status, "reason": d.reason, "warning": d.warning,
                  "settings_version": version if version is not None else max(self.view.state.version, 0),
                  "processed_at": now.isoformat(), "offset": offset}
        if d.replay is not None and not d.already_applied:
            result["replayed"], result["skipped"] = await self._replay(d.replay)
        if d.test is not None and not d.already_applied:
            result["tested_destination"] = d.test.destination_id
            if self.tester is None:
                result["status"], result["reason"] = "rejected", "test failed: no tester on this worker"
            else:
                report = await self.tester(d.test, d.command_id)
                result["check"], result["provider_status"] = report.check, report.status
                if not report.ok:
                    # "delivery" where something was sent to be stored, as before probes existed.
                    what = "probe" if report.probe else "delivery"
                    result["status"], result["reason"] = "rejected", f"test {what} failed: {report.reason}"
        if d.issued_at is not None:  # authentic: remember it, so a replay is refused
            row = orjson.dumps({"offset": offset, "issued_at": d.issued_at.isoformat(), "result": redact(result)})
            if last is None:
                # Nothing changed but the seen ids: noted here at once (the view applies the
                # same row again when it reads it), and the row goes out with the result, in
                # one producer round instead of two. A crash between the two re-processes the
                # record, which decides the same again: nothing else ran in between.
                self.view.state.seen[d.command_id] = SeenCommand(offset, d.issued_at, redact(result))
                return result, row
            md = await self.send(self.table_topic, f"cmd/{d.command_id}".encode(), row)
            last = md.offset
        if last is not None:
            await self.view.wait_for(last)  # in force on this worker before anyone hears of it
        return result, None

    async def _replay(self, cmd) -> tuple[int, int]:
        """Send matching dead letters to the workspace's current destination of the same type.

        The current one, not the one recorded at routing time: a replay usually follows a
        fix of that destination (a new API key), and an event only ever goes to its
        workspace's effective destination.
        """
        if self.replay is None:
            return 0, 0
        letters = iter_dead_letters(self.replay.bootstrap_servers, self.replay.dead_letter_topic,
                                    limit=cmd.max_records, workspace_id=cmd.workspace_id,
                                    destination_id=cmd.destination_id, event_ids=cmd.event_ids,
                                    since=cmd.since, until=cmd.until)
        # Streamed and sent in chunks: a replay of a million letters never holds them all.
        out: list = []
        pending_bytes = replayed = skipped = 0
        async for letter in letters:
            if "truncated" in letter.headers:  # a cut-down copy: its message is not whole
                skipped += 1
                continue
            d = Delivery.from_record(letter.key, letter.value, list(letter.headers.items()))
            destination_type = letter.headers.get("type", b"http").decode()
            route = self.view.state.effective(d.workspace_id)
            if route is None or route.destination_type != destination_type:
                skipped += 1
                continue
            d.destination_id, d.destination = route.destination_id, route.destination
            d.attempts, d.first_attempt_ms = 0, 0
            d.errors.append(f"replayed by command {cmd.command_id}")
            # The type header picks the engine where destination types share a delivery topic.
            out.append((self.replay.delivery_topics[destination_type], d.destination_id.encode(), d.message,
                        d.headers(type=destination_type.encode())))
            pending_bytes += len(d.message)
            if len(out) >= REPLAY_CHUNK or pending_bytes >= REPLAY_CHUNK_BYTES:
                await self.replay.send_many(out)
                replayed += len(out)
                out, pending_bytes = [], 0
        if out:
            await self.replay.send_many(out)
            replayed += len(out)
        log.info("replayed %d dead letters, skipped %d", replayed, skipped, extra={"command_id": cmd.command_id})
        return replayed, skipped

    async def _expire_seen(self, now: datetime) -> None:
        """Forget command ids issued before twice the window, by record time: a later record
        carrying one of them is refused as stale by then, so it cannot be replayed."""
        # A hundred at a time: each is a durable send, and a command should not wait long.
        for cid in self.view.state.forget_seen_before(cutoff(now, self.policy), limit=100):
            await self.send(self.table_topic, f"cmd/{cid}".encode(), None)


def _command_id(raw: bytes | None) -> str:
    try:
        return command_id_of(orjson.loads(raw or b"null"))
    except orjson.JSONDecodeError:
        return "unknown"

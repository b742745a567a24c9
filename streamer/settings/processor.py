"""Applies settings commands: decide (pure), write the table row, wait until it is in force
here, then publish the result. One worker at a time runs this (the commands topic has one
partition), so commands apply in one total order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import orjson

from streamer.dlq import read_dead_letters
from streamer.settings.rules import Decision, Policy, cutoff, decide
from streamer.settings.secrets import redact
from streamer.settings.urls import resolve_hosts, urls_in
from streamer.settings.view import SettingsView
from streamer.sinks.base import Delivery

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes | None], Awaitable[Any]]  # (topic, key, value) -> RecordMetadata
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
                 replay: ReplayTarget | None = None):
        self.view, self.send, self.policy = view, send, policy
        self.table_topic, self.results_topic = table_topic, results_topic
        self.replay = replay

    async def handle(self, raw: bytes | None, offset: int) -> dict[str, Any]:
        await self.view.caught_up()
        now = datetime.now(timezone.utc)
        resolved = None
        if not self.policy.allow_private_destinations:
            try:
                resolved = await resolve_hosts(urls_in(orjson.loads(raw or b"null")))
            except orjson.JSONDecodeError:
                resolved = {}  # decide() words the rejection
        decision = decide(self.view.state, raw or b"", offset, self.policy, now, resolved)
        if decision.previous_result is not None:
            result = decision.previous_result
        else:
            result = await self._apply(decision, offset, now)
        await self.send(self.results_topic, decision.command_id.encode(), orjson.dumps(result))
        log.info("settings command %s %s%s", result["command_id"], result["status"],
                 f": {result['reason']}" if result.get("reason") else "",
                 extra={"command_id": result["command_id"], "status": result["status"]})
        await self._expire_seen(now)
        return result

    async def _apply(self, d: Decision, offset: int, now: datetime) -> dict[str, Any]:
        version = None
        last = None
        if d.row_key is not None and not d.already_applied:
            md = await self.send(self.table_topic, d.row_key, orjson.dumps(d.row_value))
            version = last = md.offset
        result = {"command_id": d.command_id, "status": d.status, "reason": d.reason, "warning": d.warning,
                  "settings_version": version if version is not None else max(self.view.state.version, 0),
                  "processed_at": now.isoformat()}
        if d.replay is not None and not d.already_applied:
            result["replayed"], result["skipped"] = await self._replay(d.replay)
        if d.issued_at is not None:  # authentic: remember it, so a replay is refused
            row = {"offset": offset, "issued_at": d.issued_at.isoformat(), "result": redact(result)}
            md = await self.send(self.table_topic, f"cmd/{d.command_id}".encode(), orjson.dumps(row))
            last = md.offset
        if last is not None:
            await self.view.wait_for(last)  # in force on this worker before anyone hears of it
        return result

    async def _replay(self, cmd) -> tuple[int, int]:
        """Send matching dead letters to the workspace's current destination of the same type.

        The current one, not the one recorded at routing time: a replay usually follows a
        fix of that destination (a new API key), and an event only ever goes to its
        workspace's effective destination.
        """
        if self.replay is None:
            return 0, 0
        letters = await read_dead_letters(self.replay.bootstrap_servers, self.replay.dead_letter_topic,
                                          limit=cmd.max_records, workspace_id=cmd.workspace_id,
                                          destination_id=cmd.destination_id, event_ids=cmd.event_ids,
                                          since=cmd.since, until=cmd.until)
        out, skipped = [], 0
        for letter in letters:
            d = Delivery.from_record(letter.key, letter.value, list(letter.headers.items()))
            kind = letter.headers.get("type", b"http").decode()
            route = self.view.state.effective(d.workspace_id)
            if route is None or route.destination_type != kind:
                skipped += 1
                continue
            d.destination_id, d.destination = route.destination_id, route.destination
            d.attempts, d.first_attempt_ms = 0, 0
            d.errors.append(f"replayed by command {cmd.command_id}")
            # The type header picks the engine where destination types share a delivery topic.
            out.append((self.replay.delivery_topics[kind], d.destination_id.encode(), d.message,
                        d.headers(type=kind.encode())))
        if out:
            await self.replay.send_many(out)
        log.info("replayed %d dead letters, skipped %d", len(out), skipped, extra={"command_id": cmd.command_id})
        return len(out), skipped

    async def _expire_seen(self, now: datetime) -> None:
        expired = [cid for cid, s in self.view.state.seen.items() if s.issued_at < cutoff(now, self.policy)]
        for cid in expired[:100]:
            self.view.state.seen.pop(cid, None)
            await self.send(self.table_topic, f"cmd/{cid}".encode(), None)

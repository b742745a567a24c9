"""Routing one raw record: parse, resolve, filter, size rule, render, address. Pure.

The result is either a `Delivery` record for a delivery topic, a `Rejection` for the
rejected topic, or a `Skip` (unconfigured workspace, or an event kind the configuration
does not select): skips are counted, not errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from streamer.events.parse import Event, Rejection, exact_dumps, parse_event
from streamer.keys import activity_key, job_key, key_problem
from streamer.settings.state import Route, SettingsState

LINES_REPLACEMENT = "Log lines exceed size limit"


@dataclass(slots=True)
class Skip:
    reason: str  # unconfigured | not_selected


@dataclass(slots=True)
class Routed:
    delivery_type: str  # s3 | http
    key: bytes  # destination id
    value: bytes  # the rendered message
    headers: list[tuple[str, bytes]]
    workspace_id: str


def object_key(event: Event, prefix: str) -> str | Rejection:
    """The S3 key, or a rejection when a part taken from the event is not safe in a key (streamer/keys.py)."""
    b = event.body
    if event.kind == "user_activity":
        problem = key_problem(workspace_id=event.workspace_id, event=b["event"], event_id=event.event_id)
        if problem:
            return Rejection(problem)
        return activity_key(event.workspace_id, b["event"], event.event_id, event.occurred_at, prefix)
    problem = key_problem(workspace_id=event.workspace_id, job_id=b["id"])
    if problem:
        return Rejection(problem)
    return job_key(event.workspace_id, b["recipe_id"], b["id"], b["status"], event.occurred_at, prefix)


def message_json(event: Event, max_bytes: int) -> bytes | Rejection:
    """The event as compact JSON, applying the size rule of spec 4.3. An event holding
    integers beyond 64 bits is serialised by the exact encoder (streamer/events/parse.py)."""
    dumps = exact_dumps if event.exact else orjson.dumps
    data = dumps(event.body)
    if len(data) <= max_bytes:
        return data
    if event.kind == "job_details":
        data = dumps({**event.body, "lines": LINES_REPLACEMENT})
        if len(data) <= max_bytes:
            return data
    return Rejection(f"event is {len(data)} bytes as a message, over the {max_bytes} byte limit")


def route(state: SettingsState, kind: str, value: bytes | None, key: bytes | None,
          max_message_bytes: int, produced_ms: int = 0) -> Routed | Rejection | Skip:
    event = parse_event(kind, value, key)
    if isinstance(event, Rejection):
        return event
    target: Route | None = state.effective(event.workspace_id)
    if target is None:
        return Skip("unconfigured")
    if not target.wants(kind):
        return Skip("not_selected")
    okey = None
    if target.destination_type == "s3":
        okey = object_key(event, target.s3_prefix)
        if type(okey) is Rejection:
            return okey
    data = message_json(event, max_message_bytes)
    if isinstance(data, Rejection):
        return data
    message = target.template.render(data) if target.template is not None else data
    headers = [
        ("dest", target.destination),
        ("ws", event.workspace_id.encode()),
        ("eid", event.event_id.encode()),
        ("kind", kind.encode()),
        ("ts", str(produced_ms).encode()),
    ]
    if okey is not None:
        headers.append(("okey", okey.encode()))
    return Routed(target.destination_type, target.destination_id.encode(), message, headers, event.workspace_id)

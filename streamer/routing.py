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
# Destinations that store one object per event at the key layout of spec 4.1.
OBJECT_STORES = frozenset({"s3", "azure_blob", "gcs"})


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
    data = _dumps(event.body, event.exact)
    if isinstance(data, Rejection) or len(data) <= max_bytes:
        return data
    if event.kind == "job_details":
        data = _dumps({**event.body, "lines": LINES_REPLACEMENT}, event.exact)
        if isinstance(data, Rejection) or len(data) <= max_bytes:
            return data
    return Rejection(f"event is {len(data)} bytes as a message, over the {max_bytes} byte limit")


def _dumps(body: dict, exact: bool = False) -> bytes | Rejection:
    try:
        return exact_dumps(body) if exact else orjson.dumps(body)
    except (orjson.JSONEncodeError, ValueError, RecursionError) as e:
        # orjson parses 1,024 levels of nesting but writes only 254.
        return Rejection(f"event cannot be re-serialised as a message: {e}")


def render(event: Event, target: Route, max_bytes: int) -> bytes | Rejection:
    """The message the destination gets; the size rule applies to it as well as to the
    event: a template can make it larger (`{{{log_message_str}}}` escapes every quote)."""
    data = message_json(event, max_bytes)
    if isinstance(data, Rejection) or target.template is None:
        return data
    message = target.template.render(data)
    if len(message) <= max_bytes:
        return message
    if event.kind == "job_details" and event.body.get("lines") != LINES_REPLACEMENT:
        smaller = _dumps({**event.body, "lines": LINES_REPLACEMENT}, event.exact)
        if not isinstance(smaller, Rejection):
            message = target.template.render(smaller)
            if len(message) <= max_bytes:
                return message
    return Rejection(f"rendered message is {len(message)} bytes, over the {max_bytes} byte limit")


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
    if target.destination_type in OBJECT_STORES:
        okey = object_key(event, target.s3_prefix)
        if type(okey) is Rejection:
            return okey
    message = render(event, target, max_message_bytes)
    if isinstance(message, Rejection):
        return message
    headers = [
        ("dest", target.destination),
        ("ws", event.workspace_id.encode()),
        ("eid", event.event_id.encode()),
        ("kind", kind.encode()),
        ("ts", str(produced_ms).encode()),
        ("type", target.destination_type.encode()),  # the engine, where destination types share a topic
    ]
    if okey is not None:
        headers.append(("okey", okey.encode()))
    return Routed(target.destination_type, target.destination_id.encode(), message, headers, event.workspace_id)


def route_safely(state: SettingsState, kind: str, value: bytes | None, key: bytes | None,
                 max_message_bytes: int, produced_ms: int = 0) -> Routed | Rejection | Skip:
    """`route`, with any exception turned into a rejection naming it: whatever a record
    holds, it yields a delivery, a skip or a rejection, so it can never stop its partition
    (tests/test_poison.py generates hostile records to hold this)."""
    try:
        return route(state, kind, value, key, max_message_bytes, produced_ms)
    except Exception as e:  # noqa: BLE001 - the reason goes to the rejected topic
        return Rejection(f"record could not be processed: {type(e).__name__}: {e}"[:1000])

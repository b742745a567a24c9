"""Raw Kafka record -> validated `Event`, or a `Rejection` with a reason naming the field.

Pure functions: no I/O, so the routing agent stays thin and every rejection kind is unit
tested. The event dict kept on `Event.body` is the parsed JSON itself, never a model dump.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import ValidationError

from streamer.events.models import MODELS

from topics import JOBS_DETAILS, JOBS_SUMMARY, USER_ACTIVITY

KIND_BY_TOPIC = {JOBS_SUMMARY: "job_summary", JOBS_DETAILS: "job_details", USER_ACTIVITY: "user_activity"}


@dataclass(slots=True)
class Event:
    kind: str  # job_summary | job_details | user_activity
    workspace_id: str
    event_id: str
    body: dict[str, Any]
    occurred_at: datetime  # UTC; completed_at/started_at for jobs, timestamp for user activity


@dataclass(slots=True)
class Rejection:
    reason: str


def derive_event_id(body: dict[str, Any]) -> str:
    """Stable id for an event that has none: same content, same id, so re-deliveries stay idempotent."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "d-" + hashlib.sha256(canonical).hexdigest()[:32]


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(event)"
    msg = first["msg"]
    if first["type"] == "missing":
        return f"field '{loc}' is missing"
    return f"field '{loc}': {msg}"


def _utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(timezone.utc)


def parse_event(kind: str, value: bytes | None, key: bytes | None = None,
                max_bytes: int | None = None) -> Event | Rejection:
    if value is None:
        return Rejection("record has no value (tombstone)")
    if max_bytes is not None and len(value) > max_bytes:
        return Rejection(f"record is {len(value)} bytes, over the {max_bytes} byte limit")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        return Rejection(f"value is not valid UTF-8 JSON: {e}")
    if not isinstance(body, dict):
        return Rejection(f"value is a JSON {type(body).__name__}, not an object")
    try:
        model = MODELS[kind].model_validate(body)
    except ValidationError as e:
        return Rejection(_describe(e))
    if kind == "user_activity":
        workspace_id = str(model.team.id)
        event_id = str(model.id) if model.id is not None else derive_event_id(body)
        occurred = datetime.strptime(model.timestamp, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
    else:
        workspace_id = str(model.context.user_id)
        event_id = str(model.id)
        occurred = _utc(model.completed_at or model.started_at)
    if key is not None and key.decode("utf-8", "replace") != workspace_id:
        return Rejection(f"record key '{key.decode('utf-8', 'replace')[:64]}' does not match the "
                         f"event's workspace id '{workspace_id}'")
    return Event(kind=kind, workspace_id=workspace_id, event_id=event_id, body=body, occurred_at=occurred)

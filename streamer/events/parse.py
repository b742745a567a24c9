"""Raw Kafka record -> validated `Event`, or a `Rejection` with a reason naming the field.

Pure functions: no I/O, so the routing agent stays thin and every rejection kind is unit
tested. The event dict kept on `Event.body` is the parsed JSON itself, never a model dump;
a job-details record's `lines` may be kept as its JSON text (an `orjson.Fragment`, below).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import orjson
from pydantic import ValidationError

from streamer.events.models import _SNAKE, _UA_TIMESTAMP, MODELS

from streamer.topics import JOBS_DETAILS, JOBS_SUMMARY, USER_ACTIVITY

KIND_BY_TOPIC = {JOBS_SUMMARY: "job_summary", JOBS_DETAILS: "job_details", USER_ACTIVITY: "user_activity"}


@dataclass(slots=True)
class Event:
    kind: str  # job_summary | job_details | user_activity
    workspace_id: str
    event_id: str
    body: dict[str, Any]  # job details: `lines` may be an orjson.Fragment (see _details_body)
    occurred_at: datetime  # UTC; completed_at/started_at for jobs, timestamp for user activity
    exact: bool = False  # parsed by the exact parser: holds integers orjson cannot represent


@dataclass(slots=True)
class Rejection:
    reason: str


# -- exact integers ------------------------------------------------------------------------------
# orjson keeps integers only within 64 bits (-2**63 .. 2**64-1); a larger one it silently
# turns into a float (1208925819614629174706176 -> 1.2089258196146292e+24), which would
# change the event on its way through. Such an integer is a number token of at least 20
# digits, or a minus and 19, right after `:`, `[` or `,` (and whitespace). A record where
# that pattern appears is parsed again by the standard library's parser, which keeps
# integers exact, and re-serialised by it; a false alarm (the pattern inside a string)
# costs only that slower parse. orjson still parses first: it is the validator (invalid
# UTF-8, NaN, lone surrogates, 1e400 are refused as before). orjson gives no sign that it
# converted, so every record pays for one scan: bytes.translate maps digits and `-` to
# "0", `:[,` and whitespace to "!" and everything else to " ", then one substring search
# (about 1.5 us for a 1 KB event, 1 ns a byte; a regular expression took 8 to 45 us).
_SCAN = bytes(0x30 if 0x30 <= i <= 0x39 or i == 0x2D else 0x21 if i in b":[, \t\n\r" else 0x20
              for i in range(256))
_BIG_NUMBER = b"!" + b"0" * 20


def _may_hold_big_int(value: bytes) -> bool:
    return _BIG_NUMBER in value.translate(_SCAN)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def exact_loads(value: bytes) -> Any:
    return json.loads(value, parse_constant=_no_constants)


def exact_dumps(body: Any, sort_keys: bool = False) -> bytes:
    """Compact one-line JSON like orjson's, with integers of any size kept exact."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys).encode()


def derive_event_id(body: dict[str, Any], exact: bool = False) -> str:
    """Stable id for an event that has none: same content, same id, so re-deliveries stay idempotent."""
    canonical = exact_dumps(body, sort_keys=True) if exact else orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
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


# -- fast path ---------------------------------------------------------------------------------
# The pydantic models (streamer/events/models.py) are the definition of a valid event, and
# they name the field in every rejection. Validating with them costs more than all the rest of
# routing, so a well-formed event is first checked here, directly on the parsed dict, for the
# same few fields. The fast check only ever *accepts*: whatever it is not sure of (a missing
# field, an unusual type, a timestamp it does not recognise) goes to the models, which decide
# and word the rejection exactly as before. tests/test_hotpath.py checks on generated events
# that both paths agree.

def _id_ok(value: Any) -> bool:
    cls = type(value)
    return cls is int or (cls is str and 0 < len(value) <= 200)


def _optional_str(d: dict, name: str) -> bool:
    value = d.get(name)
    return value is None or type(value) is str


_STATUSES = ("succeeded", "failed")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fast_job(body: dict, details: bool) -> tuple[str, str, datetime] | None:
    job_id = body.get("id")
    context = body.get("context")
    if type(context) is not dict or type(body.get("recipe_id")) is not int:
        return None
    user_id = context.get("user_id")
    if (not _id_ok(job_id) or not _id_ok(user_id) or not _optional_str(context, "user_external_id")
            or body.get("status") not in _STATUSES):
        return None
    started = body.get("started_at")
    completed = body.get("completed_at")
    if type(started) is not str or (completed is not None and type(completed) is not str):
        return None
    try:
        started = datetime.fromisoformat(started)
        if completed is not None:
            completed = datetime.fromisoformat(completed)
    except ValueError:
        return None
    if started.tzinfo is None or (completed is not None and completed.tzinfo is None):
        return None
    if details and type(body.get("lines")) not in _LINES_TYPES:
        return None
    return str(user_id), str(job_id), (completed or started).astimezone(timezone.utc)


# -- job details: the recipe lines pass through as text -------------------------------------
# A job-details record is ~20 KB, nearly all of it `lines`, which the streamer only passes
# on: building those ~1,200 values as Python objects and writing them out again was 80% of
# its routing cost. Here the top level is split into raw JSON values (msgspec checks the
# whole record's grammar, escapes and surrogates while it skips them), every value but
# `lines` is parsed by orjson as before, and `lines` stays the producer's text, wrapped in an
# `orjson.Fragment` that `orjson.dumps` writes out as it is. Integers of any size inside the
# lines therefore pass through exact, without the slow exact parser.
# Only what this path is sure of is taken: anything else (an error, no `lines` array, line
# breaks or tabs between tokens, which would break the one-line message, invalid UTF-8, a
# big integer outside the lines) goes the full way, which decides and words any rejection.
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_LINES_TYPES = (list, orjson.Fragment)


def _details_body(value: bytes) -> dict[str, Any] | None:
    try:
        fields = _TOP_LEVEL.decode(value)
    except (msgspec.DecodeError, RecursionError):
        return None
    raw_lines = fields.get("lines")
    if raw_lines is None:
        return None
    lines = bytes(raw_lines)
    if lines[:1] != b"[" or b"\n" in lines or b"\r" in lines or b"\t" in lines:
        return None
    try:
        lines.decode("utf-8")  # what orjson would insist on; msgspec skips without decoding
    except UnicodeDecodeError:
        return None
    # Everything but the lines is parsed in one orjson call, on the record with the lines cut
    # out. `"lines":[` cannot occur inside a string (its quotes would be escaped), so the
    # member is the occurrence followed by the lines' text; one written otherwise
    # (`"lines" :`, an escaped key) is not cut.
    at = value.find(b'"lines":[')
    while at >= 0 and not value.startswith(lines, at + 8):
        at = value.find(b'"lines":[', at + 1)
    if at < 0:
        return None
    member = 8 + len(lines)
    rest = b"".join((value[:at], b'"lines":0', value[at + member:]))
    if _may_hold_big_int(rest):
        return None
    try:
        body = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    placeholder = body.get("lines")
    if type(placeholder) is not int or placeholder != 0:
        return None  # the cut was not the top-level member (a nested `"lines"` with the same text)
    body["lines"] = orjson.Fragment(lines)
    return body


def _fast_activity(body: dict) -> tuple[str, str | None, datetime] | None:
    event_id = body.get("id")
    event = body.get("event")
    stamp = body.get("timestamp")
    team = body.get("team")
    user = body.get("user")
    if ((event_id is not None and not _id_ok(event_id)) or type(event) is not str or len(event) > 100
            or not _SNAKE.match(event) or type(stamp) is not str or len(stamp) != 23 or not stamp.isascii()
            or not _UA_TIMESTAMP.match(stamp) or type(team) is not dict or not _id_ok(team.get("id"))
            or not _optional_str(team, "external_id")):
        return None
    if user is not None and (type(user) is not dict or not _id_ok(user.get("id"))
                             or not _optional_str(user, "external_id")):
        return None
    try:
        occurred = datetime(int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]), int(stamp[11:13]),
                            int(stamp[14:16]), int(stamp[17:19]), tzinfo=timezone.utc)
    except ValueError:
        return None
    return str(team["id"]), None if event_id is None else str(event_id), occurred


def _validated(kind: str, body: dict, exact: bool = False) -> tuple[str, str | None, datetime] | Rejection:
    """(workspace id, event id or None when it must be derived, occurred at), or the rejection.

    `exact`: the body may hold integers beyond 64 bits, which only the models' id check
    words a rejection for, so the fast path is skipped."""
    if not exact:
        fast = _fast_activity(body) if kind == "user_activity" else _fast_job(body, kind == "job_details")
        if fast is not None:
            return fast
    try:
        model = MODELS[kind].model_validate(body)
    except ValidationError as e:
        return Rejection(_describe(e))
    if kind == "user_activity":
        occurred = datetime.strptime(model.timestamp, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
        return str(model.team.id), None if model.id is None else str(model.id), occurred
    return str(model.context.user_id), str(model.id), _utc(model.completed_at or model.started_at)


def parse_event(kind: str, value: bytes | None, key: bytes | None = None,
                max_bytes: int | None = None) -> Event | Rejection:
    if value is None:
        return Rejection("record has no value (tombstone)")
    if max_bytes is not None and len(value) > max_bytes:
        return Rejection(f"record is {len(value)} bytes, over the {max_bytes} byte limit")
    checked = None
    exact = False
    if kind == "job_details":
        body = _details_body(value)
        if body is not None:
            try:
                checked = _fast_job(body, details=True)
            except OverflowError:
                checked = None  # the full way words it
    if checked is None:
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            return Rejection(f"value is not valid UTF-8 JSON: {e}")
        if _may_hold_big_int(value):
            try:
                body, exact = exact_loads(value), True
            except (ValueError, RecursionError) as e:
                return Rejection(f"value cannot be parsed with its integers kept exact: {type(e).__name__}: {e}"[:300])
        if not isinstance(body, dict):
            return Rejection(f"value is a JSON {type(body).__name__}, not an object")
        try:
            checked = _validated(kind, body, exact)
        except OverflowError as e:
            # A valid ISO time whose UTC conversion leaves datetime's range (0001-01-01T00:00+01:00).
            return Rejection(f"a timestamp is out of range once converted to UTC: {e}")
    if type(checked) is Rejection:
        return checked
    workspace_id, event_id, occurred = checked
    if event_id is not None and _CONTROL.search(event_id):
        # It travels as the Idempotency-Key header and in object keys.
        return Rejection("field 'id' contains a control character")
    if key is not None and key.decode("utf-8", "replace") != workspace_id:
        return Rejection(f"record key '{key.decode('utf-8', 'replace')[:64]}' does not match the "
                         f"event's workspace id '{workspace_id}'")
    if event_id is None:
        try:
            event_id = derive_event_id(body, exact)
        except (orjson.JSONEncodeError, ValueError, RecursionError) as e:
            return Rejection(f"event id cannot be derived: the event cannot be re-serialised: {e}")
    return Event(kind=kind, workspace_id=workspace_id, event_id=event_id, body=body, occurred_at=occurred,
                 exact=exact)

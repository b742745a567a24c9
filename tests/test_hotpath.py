"""The hot path's shortcuts agree with the definitions they stand in for.

- parse_event: the direct field checks accept only what the pydantic models accept, and
  produce the same workspace id, event id and time; everything else still gets the models'
  rejection with the field named.
- Datadog items and S3 keys: the same bytes as the straightforward construction.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.events import parse
from streamer.events.parse import Event, Rejection, exact_dumps, parse_event

JOB = {"id": "j-Qm3xT7pa-Hk2sLd", "recipe_id": 4410237, "status": "succeeded", "title": "t",
       "started_at": "2026-03-14T09:29:58-07:00", "completed_at": "2026-03-14T09:30:02-07:00",
       "account_id": 78125, "context": {"user_id": 78125, "user_external_id": "acme", "recipe_id": 4410237}}
DETAILS = {**JOB, "lines": [{"recipe_line_number": 0, "input": {"a": 1}}, {"recipe_line_number": 1}]}
ACTIVITY = {"id": "ua-1", "event": "user_login", "timestamp": "2026-03-14 16:31:07 UTC",
            "user": {"id": 99120, "external_id": None}, "team": {"id": 78125, "external_id": None}}
BASE = {"job_summary": JOB, "job_details": DETAILS, "user_activity": ACTIVITY}

# Values that sit on the edges of the models' rules.
ODD_VALUES = [
    None, True, False, 0, -1, 7, 2**63, 2**64 - 1, 1.5, "", "x", "x" * 200, "x" * 201, [], {}, [{}],
    "succeeded", "failed", "running", "user_login", "User Login", "user_login\n", "a" * 101, "9abc",
    "2026-03-14T09:30:02", "2026-03-14T09:30:02Z", "2026-03-14T09:30:02+00:00", "2026-03-14", "yesterday",
    "2026-03-14 16:31:07 UTC", "2026-03-14 16:31:07 UTC\n", "2026-13-14 16:31:07 UTC", "2026-02-30 16:31:07 UTC",
    "2026-03-14 24:31:07 UTC", "2026-03-14 16:31:60 UTC", "0999-03-14 16:31:07 UTC", "0000-03-14 16:31:07 UTC",
    "２０２６-03-14 16:31:07 UTC", "2026-03-14 16:31:07 utc", "2026-03-14T16:31:07 UTC",
    {"id": 1}, {"id": "w"}, {"id": ""}, {"id": 1, "external_id": 5}, {"user_id": 5}, {"user_id": True},
    {"user_id": "78125", "user_external_id": None}, {"user_id": 78125, "user_external_id": 3},
    [{"recipe_line_number": 0}], [{"recipe_line_number": -1}], [{"recipe_line_number": True}],
    [{"recipe_line_number": 1.0}], [{"recipe_line_number": "1"}], [1], [{"recipe_line_number": 2**64 - 1}],
]
ODD = st.sampled_from(ODD_VALUES)
MISSING = object()
FIELDS = ["id", "recipe_id", "status", "started_at", "completed_at", "context", "lines", "event", "timestamp",
          "team", "user", "account_id"]
NESTED = {"context": ["user_id", "user_external_id"], "team": ["id", "external_id"], "user": ["id", "external_id"]}


def _slow(kind: str, value: bytes, key: bytes | None) -> Event | Rejection:
    """parse_event with the fast checks switched off: the models decide everything."""
    fast_job, fast_activity = parse._fast_job, parse._fast_activity
    parse._fast_job = lambda body, details: None
    parse._fast_activity = lambda body: None
    try:
        return parse_event(kind, value, key)
    finally:
        parse._fast_job, parse._fast_activity = fast_job, fast_activity


@st.composite
def mutated(draw):
    kind = draw(st.sampled_from(sorted(BASE)))
    body = orjson.loads(orjson.dumps(BASE[kind]))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(FIELDS + [f"{o}.{i}" for o, inner in NESTED.items() for i in inner]))
        outer, _, inner = name.partition(".")
        target = body.get(outer) if inner else body
        field = inner or outer
        if not isinstance(target, dict):
            continue
        if draw(st.booleans()):
            target.pop(field, None)
        else:
            target[field] = orjson.loads(orjson.dumps(draw(ODD)))  # a copy: the values are shared
    key = draw(st.sampled_from([None, b"78125", b"5"]))
    return kind, orjson.dumps(body), key


def _same(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, Rejection):
        assert a.reason == b.reason
    else:
        # Job details keep their lines as JSON text (orjson.Fragment): compare as JSON.
        assert (a.kind, a.workspace_id, a.event_id, orjson.loads(orjson.dumps(a.body)), a.occurred_at) == \
               (b.kind, b.workspace_id, b.event_id, orjson.loads(orjson.dumps(b.body)), b.occurred_at)
        assert a.occurred_at.tzinfo is not None and a.occurred_at.utcoffset().total_seconds() == 0


def _with(body: dict, name: str, value) -> dict:
    body = orjson.loads(orjson.dumps(body))
    outer, _, inner = name.partition(".")
    target = body.get(outer) if inner else body
    if isinstance(target, dict):
        if value is MISSING:
            target.pop(inner or outer, None)
        else:
            target[inner or outer] = value
    return body


def test_every_single_odd_field_is_decided_as_the_models_decide():
    names = FIELDS + [f"{o}.{i}" for o, inner in NESTED.items() for i in inner] + ["lines.0"]
    checked = 0
    for kind, base in BASE.items():
        for name in names:
            for value in ODD_VALUES + [MISSING]:
                if name == "lines.0":  # the first line replaced
                    body = orjson.loads(orjson.dumps(base))
                    if "lines" not in body or value is MISSING:
                        continue
                    body["lines"][0] = value
                else:
                    body = _with(base, name, value)
                raw = orjson.dumps(body)
                _same(parse_event(kind, raw), _slow(kind, raw, None))
                checked += 1
    assert checked > 3000


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fast_validation_agrees_with_the_models(case):
    kind, value, key = case
    _same(parse_event(kind, value, key), _slow(kind, value, key))


@pytest.mark.parametrize("kind", sorted(BASE))
def test_well_formed_events_take_the_fast_path(kind):
    body = BASE[kind]
    fast = parse._fast_activity(body) if kind == "user_activity" else parse._fast_job(body, kind == "job_details")
    assert fast is not None
    event = parse_event(kind, orjson.dumps(body))
    assert isinstance(event, Event) and event.workspace_id == "78125"


def test_job_time_is_completed_at_else_started_at_in_utc():
    ev = parse_event("job_summary", orjson.dumps({**JOB, "completed_at": None}))
    assert ev.occurred_at == datetime(2026, 3, 14, 16, 29, 58, tzinfo=timezone.utc)
    ev = parse_event("job_summary", orjson.dumps(JOB))
    assert ev.occurred_at == datetime(2026, 3, 14, 16, 30, 2, tzinfo=timezone.utc)


# -- job details: the lines pass through as their JSON text -----------------------------------

def _message(value: bytes) -> bytes | Rejection:
    from streamer.routing import message_json

    event = parse_event("job_details", value)
    return event if isinstance(event, Rejection) else message_json(event, 10**9)


def _full(value: bytes) -> Event | Rejection:
    """parse_event without the lines shortcut: everything parsed and re-serialised."""
    details_body = parse._details_body
    parse._details_body = lambda value: None
    try:
        return parse_event("job_details", value)
    finally:
        parse._details_body = details_body


def test_job_details_keep_their_lines_as_text_and_give_the_same_message(samples):
    from streamer.benchmark.workload import event_bytes

    # (The sample is pretty-printed, which takes the full way; compacted, it takes the shortcut.)
    for value in [orjson.dumps(DETAILS), event_bytes("job_details", "78125", 3, 5),
                  orjson.dumps(orjson.loads(samples["job_details_masked_step"]))]:
        event = parse_event("job_details", value)
        assert type(event.body["lines"]) is orjson.Fragment, "not taken lazily"
        assert _message(value) == orjson.dumps(orjson.loads(value))  # compact input: byte for byte the same
        _same(event, _full(value))


def test_lines_pass_through_as_the_producer_wrote_them():
    lines = b'[ {"recipe_line_number":0, "x":"caf\\u00e9 \\/", "n":1.50E+2, "big":123456789012345678901234567890} ]'
    value = orjson.dumps(JOB)[:-1] + b',"lines":' + lines + b"}"
    assert _message(value).endswith(b',"lines":' + lines + b"}")
    assert parse_event("job_details", value).exact is False  # no slow exact parse for a big integer in the lines
    # Decided (README, job-details lines): steps are not validated, and a number out of double
    # range inside the lines is passed on as written (the full parse refuses the record).
    for lines in [b'[{"adapter_name":"no recipe_line_number"},"x",-1]', b'[{"recipe_line_number":0,"n":1e400}]']:
        value = orjson.dumps(JOB)[:-1] + b',"lines":' + lines + b"}"
        assert _message(value).endswith(b',"lines":' + lines + b"}")
    assert isinstance(_full(orjson.dumps(JOB)[:-1] + b',"lines":[1e400]}'), Rejection)


def test_what_the_lines_shortcut_is_not_sure_of_goes_the_full_way():
    head = orjson.dumps(JOB)[:-1]
    pretty = orjson.dumps(DETAILS, option=orjson.OPT_INDENT_2)
    event = parse_event("job_details", pretty)
    assert type(event.body["lines"]) is list and b"\n" not in _message(pretty)  # still one line
    for spaced in [b'[\n{"recipe_line_number":0}\n]', b'[{"a":1,\r\n"b":2}]', b'[1,\t2]']:
        value = orjson.dumps(JOB)[:-1] + b',"lines":' + spaced + b"}"
        assert not any(c in _message(value) for c in b"\n\r\t") and _same(parse_event("job_details", value), _full(value)) is None
    # A big integer outside the lines: the exact parser, digits kept.
    big = head + b',"x":123456789012345678901234567890,"lines":[]}'
    assert parse_event("job_details", big).exact and b"123456789012345678901234567890" in _message(big)
    # A nested "lines" member with the same text before the top-level one is not the one cut.
    nested = orjson.dumps({**JOB, "report": {"lines": [1]}, "lines": [1]})
    assert orjson.loads(_message(nested))["report"] == {"lines": [1]}
    # The key written with an escape, spaces around the colon, duplicate members: as orjson reads them.
    for value in [head + b',"\\u006cines":[1]}', head + b',"lines" : [1]}', head + b',"lines":[1],"lines":[2]}',
                  head + b',"lines":[2],"report":{"lines":[2]},"lines":[3]}']:
        assert orjson.loads(_message(value)) == orjson.loads(value), value
    # Invalid UTF-8 or JSON inside the lines: rejected as before, with the same reason.
    for bad in [head + b',"lines":["\xff"]}', head + b',"lines":[1,]}', head + b',"lines":[NaN]}',
                head + b',"lines":["\\ud800"]}', head + b',"lines":["a\x01"]}']:
        rejected = parse_event("job_details", bad)
        assert isinstance(rejected, Rejection) and "not valid UTF-8 JSON" in rejected.reason, bad
        _same(rejected, _full(bad))
    # Lines that are not an array: the models word it.
    assert "'lines'" in parse_event("job_details", head + b',"lines":"x"}').reason


def test_lines_deeper_than_orjson_can_write_now_pass_through():
    deep = b"[" * 300 + b"]" * 300
    value = orjson.dumps(JOB)[:-1] + b',"lines":' + deep + b"}"
    from streamer.routing import message_json

    assert isinstance(message_json(_full(value), 10**9), Rejection)  # re-serialising fails: orjson writes 254 levels
    assert _message(value).endswith(deep + b"}")


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
                       | st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                       max_leaves=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(JSONISH, max_size=4), st.dictionaries(st.sampled_from(["report", "error", "lines", "x"]), JSONISH, max_size=3),
       st.booleans(), st.booleans())
def test_lines_shortcut_agrees_with_the_full_parse(lines, extra, compact, ascii_only):
    import json

    body = {**extra, **JOB, "lines": lines}
    value = json.dumps(body, separators=(",", ":") if compact else (", ", ": "), ensure_ascii=ascii_only).encode()
    fast, full = parse_event("job_details", value), _full(value)
    assert isinstance(fast, Event) and isinstance(full, Event)
    assert (fast.workspace_id, fast.event_id, fast.occurred_at) == (full.workspace_id, full.event_id, full.occurred_at)
    # json, not orjson, compares: it keeps integers beyond 64 bits exact.
    assert json.loads(_message(value)) == json.loads(exact_dumps(full.body) if full.exact else orjson.dumps(full.body))


def test_compact_workspace_entries_give_back_the_models_and_the_same_digest():
    import hashlib

    from streamer.benchmark.workload import build_settings, datadog_destination, s3_destination
    from streamer.settings.model import Configuration, Registration

    keys = {"k": b"k" * 32}
    rows = build_settings(datadog_destination("https://intake.example.com", "dd-key"), workspaces=300, partners=6,
                          partner_wide=2, encryption_keys=keys, apply=False).rows
    rows += build_settings(s3_destination("https://s3.example.com", "bucket"), workspaces=50, partners=1,
                           partner_wide=0, encryption_keys=keys, apply=False, seed=3).rows
    some = next(c for c in (orjson.loads(v).get("config") for k, v in rows if k.startswith(b"ws/")) if c)
    disabled = {**some, "enabled": False}
    rows.append((b"ws/disabled", orjson.dumps({"registration": {"workspace_id": "disabled", "partner_id": "p",
                                                                "role": "customer"}, "config": disabled})))
    state = __import__("streamer.settings.state", fromlist=["SettingsState"]).SettingsState()
    for offset, (k, v) in enumerate(rows):
        state.apply(k, v, offset)
    latest = {k.decode(): orjson.loads(v) for k, v in rows}
    h = hashlib.sha256()
    for ws in sorted(state.workspaces):
        row, entry = latest[f"ws/{ws}"], state.workspaces[ws]
        reg = Registration.model_validate(row["registration"])
        config = Configuration.model_validate(row["config"]) if row["config"] else None
        assert entry.registration == reg and entry.config == config and entry.partner_id == reg.partner_id
        h.update(orjson.dumps([ws, reg.model_dump(mode="json"), config and config.model_dump(mode="json")]))
    for pid in sorted(state.partners):
        h.update(orjson.dumps([pid, state.partners[pid].config.model_dump(mode="json")]))
    assert state.digest() == h.hexdigest()
    # Both ways of keeping a configuration were exercised: without its destination (held by
    # the route) and whole (disabled, no route).
    assert {e._config_tail for e in state.workspaces.values() if e._config is not None} == {True, False}
    # A route's destination and S3 prefix are what the configuration alone gives.
    from streamer.settings.state import build_route
    for ws, entry in state.workspaces.items():
        if entry.route is not None:
            alone = build_route(f"workspace:{ws}", "workspace", entry.config)
            assert (entry.route.destination, entry.route.s3_prefix) == (alone.destination, alone.s3_prefix)
            assert entry.route.destination == orjson.dumps(entry.config.destination.model_dump(mode="json"))
    assert any(e.route and e.route.s3_prefix for e in state.workspaces.values())


def test_rows_the_processor_marked_apply_as_validating_them_again_would():
    """A marked row (row_format) skips validation: it must give the very entry and route the
    validating path gives, for every kind of destination; an unmarked or foreign-marked row,
    and a marked row that is not what the mark says, are still validated."""
    from streamer.admin import encrypt_secrets
    from streamer.benchmark.workload import build_settings, datadog_destination, s3_destination
    from streamer.settings.model import Configuration
    from streamer.settings.state import SettingsState, row_format

    keys = {"k": b"k" * 32}
    rows = build_settings(datadog_destination("https://intake.example.com", "dd-key"), workspaces=200, partners=4,
                          partner_wide=1, encryption_keys=keys, apply=False).rows
    rows += build_settings(s3_destination("https://s3.example.com", "bucket"), workspaces=40, partners=1,
                           partner_wide=0, encryption_keys=keys, apply=False, seed=3).rows
    assert all(orjson.loads(v)["format"] == row_format() for _, v in rows)  # written as the processor does
    destinations = [
        {"type": "azure_blob", "account_url": "https://acct.blob.core.windows.net", "container": "logs",
         "prefix": "a/b", "account_key": "a2V5"},
        {"type": "gcs", "bucket": "audit-logs", "prefix": "p", "service_account_key": '{"type": "service_account"}'},
        {"type": "azure_monitor", "endpoint": "https://dce.ingest.monitor.azure.com", "rule_id": "dcr-1",
         "stream": "Custom-Audit", "tenant_id": "t", "client_id": "c", "client_secret": "s"},
        {"type": "http", "provider": "generic", "url": "https://logs.example.com/in",
         "auth": {"type": "basic", "username": "u", "password": "p"}, "headers": {"X-A": "1"},
         "secret_headers": {"X-Token": "t"}},
        {"type": "http", "provider": "splunk", "url": "https://hec.example.com", "token": "tok", "index": "main"},
        {"type": "s3", "bucket": "bucket", "prefix": "", "role_arn": "arn:aws:iam::123456789012:role/r"},
    ]
    extra = [{"destination": d, "jobs": "details", "template": "{{ event_id }}"} for d in destinations]
    extra.append({"destination": destinations[0], "enabled": False})
    for i, c in enumerate(extra):
        config = Configuration.model_validate(encrypt_secrets(c, keys, f"ws/x{i}")).model_dump(mode="json")
        rows.append((f"ws/x{i}".encode(), orjson.dumps({
            "registration": {"workspace_id": f"x{i}", "partner_id": "p", "role": "customer", "external_id": None},
            "config": config, "command": {"id": f"c{i}", "offset": 0, "issued_at": "2026-01-01T00:00:00+00:00"},
            "format": row_format()})))

    def applied(mark) -> SettingsState:
        state = SettingsState()
        for offset, (k, v) in enumerate(rows):
            row = orjson.loads(v)
            if mark is None:
                row.pop("format")
            else:
                row["format"] = mark
            state.apply(k, orjson.dumps(row), offset)
        return state

    def seen(state: SettingsState) -> dict:
        return {ws: (e.partner_id, e._registration, e._config_json(), e.command_id, e.route)
                for ws, e in state.workspaces.items()}

    marked, unmarked, foreign = applied(row_format()), applied(None), applied("0.elsewhere")
    assert seen(marked) == seen(unmarked) == seen(foreign)
    assert marked.digest() == unmarked.digest()
    assert {e.route.destination_type for e in marked.workspaces.values() if e.route} == {
        "http", "s3", "azure_blob", "gcs", "azure_monitor"}
    assert marked.workspaces["x0"].route.s3_prefix == "a/b" and marked.workspaces["x6"].route is None

    # An unmarked row that does not validate is refused (the view logs and skips it:
    # SettingsView._run); a marked one that is not what the mark says is validated.
    bad = {"registration": {"workspace_id": "w", "partner_id": "p", "role": "nobody"}, "config": None,
           "command": {"id": "c", "offset": 0, "issued_at": "2026-01-01T00:00:00+00:00"}}
    with pytest.raises(ValueError):
        SettingsState().apply(b"ws/w", orjson.dumps(bad), 0)
    half = {**bad, "registration": {"workspace_id": "w", "partner_id": "p", "role": "customer"},
            "config": {"destination": {"type": "s3", "bucket": "bkt"}}, "format": row_format()}
    state, validated = SettingsState(), SettingsState()
    state.apply(b"ws/w", orjson.dumps(half), 0)
    validated.apply(b"ws/w", orjson.dumps({**half, "format": None}), 0)
    assert seen(state) == seen(validated) and state.workspaces["w"].route.destination_type == "s3"


def test_only_commands_that_can_still_be_replayed_are_remembered():
    from datetime import timedelta

    from streamer import topics as T
    from streamer.settings.state import SEEN_HORIZON, SettingsState

    retention_ms = int(next(t for t in T.TOPICS if t.name == T.SETTINGS_COMMANDS).configs["retention.ms"])
    assert SEEN_HORIZON >= timedelta(milliseconds=retention_ms) + timedelta(days=7)  # + a segment's span
    state = SettingsState()
    now = datetime.now(timezone.utc)
    for offset, (cid, issued) in enumerate([("old", now - SEEN_HORIZON - timedelta(hours=1)),
                                            ("recent", now - SEEN_HORIZON + timedelta(hours=1))]):
        row = {"registration": {"workspace_id": cid, "partner_id": "p", "role": "customer"}, "config": None,
               "command": {"id": cid, "offset": offset, "issued_at": issued.isoformat()}}
        state.apply(f"ws/{cid}".encode(), orjson.dumps(row), offset)
    assert set(state.seen) == {"recent"} and set(state.workspaces) == {"old", "recent"}
    # A row read again (the same offset) changes nothing.
    state.apply(b"ws/old", None, 0)
    assert "old" in state.workspaces


@pytest.mark.parametrize("dest", [{}, {"ddsource": "s", "service": "svc", "ddtags": "env:x,team:y", "hostname": "h"},
                                  {"ddtags": "", "hostname": None, "service": ""}])
def test_datadog_items_are_the_plain_construction(dest):
    from streamer.sinks.base import Delivery
    from streamer.sinks.http import datadog

    messages = [b'{"a":"quote \\" backslash \\\\ \\u0001 ctrl","b":"\xc3\xa9\xe2\x80\xa8"}', b"{}", b'"s"']
    deliveries = [Delivery("d", b"{}", "w", f"e{i}", "job_summary", m) for i, m in enumerate(messages)]
    fields = {"ddsource": dest.get("ddsource") or "workato", "service": dest.get("service") or "audit-log"}
    fields.update({k: dest[k] for k in ("ddtags", "hostname") if dest.get(k)})
    plain = [orjson.dumps({**fields, "message": m.decode()}) for m in messages]
    encoded = datadog.encode({**dest, "url": "https://x"}, {}, deliveries)
    assert [r.body for r in encoded.requests] == [b"[" + b",".join(plain) + b"]"]
    single = datadog.encode({**dest, "url": "https://x"}, {}, deliveries[:1])
    assert [r.body for r in single.requests] == [b"[" + plain[0] + b"]"] and single.requests[0].items == [0]

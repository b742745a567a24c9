"""Poison records: whatever a raw record holds, routing yields a delivery, a skip or a
rejection with a reason, never an exception; and through the real broker such records go
to the rejected topic while the rest of their partition keeps flowing.

Before this, some records made routing raise and the batch was retried for ever, stopping
every tenant on the partition: a time whose UTC conversion overflows, an event nested
deeper than orjson writes (it reads 1,024 levels, writes 254), a non-JSON value whose
rejected copy is over the topic limit, and a template that doubles an event past the
40 MB rule.
"""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from streamer import topics as T
from streamer.routing import Rejection, Routed, Skip, route
from streamer.settings.state import SettingsState
from tests.support import accepted, admin_for, consume, http_config, job_event, produce, uid

WS = "4242"
KINDS = ["job_summary", "job_details", "user_activity"]
TEMPLATE = '{"wrapped": {{{log_message_str}}}, "obj": {{log_message}}, "at": {{{now}}}}'


def state_with_template(kind: str = "job_summary") -> SettingsState:
    """A workspace whose configuration selects `kind`, with a template that escapes."""
    state = SettingsState()
    state.apply(f"ws/{WS}".encode(), orjson.dumps({
        "registration": {"workspace_id": WS, "partner_id": "p", "role": "customer", "external_id": None},
        "config": {"enabled": True, "jobs": "details" if kind == "job_details" else "status", "user_activity": True, "template": TEMPLATE,
                   "destination": {"type": "http", "provider": "generic", "url": "https://logs.example/x"}}}), 0)
    return state


DEEP = "@@deep@@"


def nested_json(depth: int) -> bytes:
    return b'{"d":' * depth + b'"deep"' + b"}" * depth


def encode(body: object, depth: int = 0) -> bytes:
    """JSON of `body` (big integers kept, as the standard library writes them) with the
    string DEEP replaced by an object nested `depth` levels: orjson writes only 254."""
    data = json.dumps(body).encode()
    return data.replace(json.dumps(DEEP).encode(), nested_json(depth), 1) if depth else data


TIMES = st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00", "2026-03-14T09:29:58-07:00",
                         "2026-02-30T00:00:00Z", "not a time", "2026-03-14T09:29:58", ""])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                    st.floats(allow_nan=False), st.text(max_size=30))
IDS = st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.text(max_size=40),
                st.sampled_from(["j-1", "../../etc", "a/b", "\x00", "x" * 300]), st.none())
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=12)


@st.composite
def hostile_jobs(draw) -> dict:
    body = job_event(WS, draw(IDS), recipe_id=draw(st.one_of(st.integers(-5, 10 ** 20), st.text(max_size=3))),
                     status=draw(st.sampled_from(["succeeded", "failed", "weird", 7])))
    body["started_at"] = draw(TIMES)
    body["completed_at"] = draw(st.one_of(st.none(), TIMES))
    if draw(st.booleans()):
        body["lines"] = draw(st.one_of(st.lists(st.fixed_dictionaries(
            {"recipe_line_number": st.integers(-3, 2 ** 70), "input": JSONISH}), max_size=3), JSONISH))
    if draw(st.booleans()):
        body["extra"] = draw(JSONISH)
    if draw(st.booleans()):
        body["context"] = draw(st.one_of(JSONISH, st.just({"user_id": WS})))
    body["deep"] = DEEP
    return encode(body, draw(st.sampled_from([0, 10, 253, 260, 300, 900])))


@st.composite
def hostile_activity(draw) -> dict:
    body = {"id": draw(IDS), "event": draw(st.sampled_from(["user_login", "x" * 200, "Bad Event", 3])),
            "timestamp": draw(st.sampled_from(["2026-03-14 16:31:07 UTC", "0000-00-00 00:00:00 UTC",
                                               "9999-99-99 99:99:99 UTC", "yesterday"])),
            "team": {"id": WS, "external_id": None}}
    if draw(st.booleans()):
        body["team"] = draw(JSONISH)
    body["nested"] = DEEP
    return encode(body, draw(st.sampled_from([0, 100, 254, 255, 400])))


RAW = st.one_of(
    st.binary(max_size=200),
    st.just(b"\xff\xfe{"), st.just(b"[]"), st.just(b"null"), st.just(b'"x"'),
    st.builds(nested_json, st.sampled_from([200, 300, 1000, 1100])),
)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KINDS), st.one_of(hostile_jobs(), hostile_activity(), RAW),
       st.sampled_from([None, WS.encode(), b"other", b"\xff"]))
def test_routing_never_raises_on_hostile_records(kind, value, key):
    result = route(state_with_template(kind), kind, value, key, 2000)
    assert isinstance(result, (Routed, Skip, Rejection))
    if isinstance(result, Rejection):
        assert result.reason
    if isinstance(result, Routed):
        assert len(result.value) <= 2000


def test_the_known_poison_records_are_rejected_with_a_reason():
    state = state_with_template()
    cases = {
        "started_at before year 1 in UTC": job_event(WS, "j1", started_at="0001-01-01T00:00:00+01:00",
                                                     completed_at=None),
        "completed_at after year 9999 in UTC": job_event(WS, "j2", completed_at="9999-12-31T23:30:00-01:00"),
        "nested 300 levels": job_event(WS, "j3", deep=DEEP),
    }
    for what, body in cases.items():
        result = route(state, "job_summary", encode(body, 300), WS.encode(), 40 * 1024 * 1024)
        assert isinstance(result, Rejection), what
    # The template escapes every quote: an event under the limit renders over it.
    body = job_event(WS, "j4", title='"' * 500)
    result = route(state, "job_summary", orjson.dumps(body), WS.encode(), 2000)
    assert isinstance(result, Rejection) and "rendered message" in result.reason


async def test_poison_records_go_to_rejected_and_the_partition_keeps_flowing(env, worker_factory, kafka, prefix,
                                                                                 providers):
    """Every hostile record, one partition (one key), good events before and after each."""
    worker = worker_factory()
    worker.wait_ready()
    name = f"poison-{uid()}"
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id=WS, partner_id="p", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id=WS,
                       config=http_config(providers, "generic", name, jobs="status", template=TEMPLATE))
    limit = 50 * 1024 * 1024  # the raw topics' max.message.bytes
    poison = [
        orjson.dumps(job_event(WS, "p1", started_at="0001-01-01T00:00:00+01:00", completed_at=None)),
        orjson.dumps(job_event(WS, "p2", completed_at="9999-12-31T23:30:00-01:00")),
        encode(job_event(WS, "p3", deep=DEEP), 300),
        # Not JSON, and so close to the topic limit that its rejected copy (the value plus
        # the reason and source headers) does not fit: it is cut down, not retried for ever.
        b"\x00" * (limit - 120),
    ]
    records = []
    for i, bad in enumerate(poison):
        records.append((WS.encode(), orjson.dumps(job_event(WS, f"good-{i}"))))
        records.append((WS.encode(), bad))
    records.append((WS.encode(), orjson.dumps(job_event(WS, "good-last"))))
    await produce(kafka, prefix + T.JOBS_SUMMARY, records)

    got = await providers.wait_items(name, 5, timeout=90)
    assert sorted(m["obj"]["id"] for m in got) == ["good-0", "good-1", "good-2", "good-3", "good-last"]
    rejected = await consume(kafka, prefix + T.REJECTED, 4, timeout=60)
    reasons = sorted(dict(m.headers)["reason"].decode() for m in rejected)
    assert len(rejected) == 4, reasons
    assert sum("out of range" in r for r in reasons) == 2
    assert any("re-serialised" in r for r in reasons)
    cut = [m for m in rejected if "truncated" in dict(m.headers)]
    assert len(cut) == 1 and dict(cut[0].headers)["truncated"] == str(limit - 120).encode()
    assert len(cut[0].value) < 100_000 and dict(cut[0].headers)["source_topic"] == (prefix + T.JOBS_SUMMARY).encode()
    status, body = worker.get("/health")
    assert status == 200

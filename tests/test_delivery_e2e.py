"""Route and deliver, end to end: real broker, worker subprocess, moto S3, provider servers."""

from __future__ import annotations

import asyncio
import random

import orjson

from streamer.events.parse import derive_event_id
from tests.support import (accepted, activity_event, admin_for, consume, http_config, job_event, make_bucket,
                           produce, s3_config, s3_objects, workspace_of)

SUMMARY, DETAILS, ACTIVITY = "audit.jobs.summary.v1", "audit.jobs.details.v1", "audit.user_activity.v1"


def compact(raw: bytes) -> dict:
    return orjson.loads(raw)


async def send_samples(kafka, prefix, samples, names):
    topic_of = {"job_summary": SUMMARY, "job_details": DETAILS, "user_activity": ACTIVITY}
    for name in names:
        body = orjson.loads(samples[name])
        ws = workspace_of(body)
        kind = "user_activity" if name.startswith("user") else "job_details" if "details" in name else "job_summary"
        await produce(kafka, prefix + topic_of[kind], [(ws.encode(), samples[name])])


async def test_every_sample_reaches_its_destination_in_the_right_shape(env, worker_factory, samples, s3, kafka,
                                                                        prefix, providers):
    bucket = prefix.rstrip(".").lower() + "-samples"
    await make_bucket(s3, bucket)
    worker_factory().wait_ready()
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="5234", partner_id="northwind-partner", role="customer")
        await accepted(admin, "register_workspace", workspace_id="78125", partner_id="acme-partner", role="customer")
        await accepted(admin, "put_partner_config", partner_id="northwind-partner",
                       config=s3_config(s3, bucket, prefix="audit/"))
        await accepted(admin, "put_workspace_config", workspace_id="78125",
                       config=http_config(providers, "datadog", "acme", jobs="details", ddtags="env:test"))

        await send_samples(kafka, prefix, samples, list(samples))
        # S3: the numeric job id and the id-less activity, at the spec's keys.
        objects = await s3_objects(s3, bucket, 2)
        job_key = "audit/5234/jobs/234/20180521/000/000/000/000/000/000/100/5234-234-100-20180521000000-failed.json"
        ua = compact(samples["user_activity_recipe_renamed_no_id"])
        ua_key = f"audit/5234/activities/20260315/5234-recipe_renamed-{derive_event_id(ua)}-20260315080241.json"
        assert sorted(objects) == sorted([job_key, ua_key])
        assert compact(objects[job_key][0]) == compact(samples["job_summary_failed_numeric_id"])
        assert compact(objects[ua_key][0]) == ua
        assert {ct for _, ct in objects.values()} == {"application/json"}

        # Datadog: details (summaries are not selected with jobs=details) and the login.
        items = await providers.wait_items("acme", 2)
        messages = sorted((orjson.loads(i["message"]) for i in items), key=lambda m: "event" in m)
        assert messages == [compact(samples["job_details_masked_step"]), compact(samples["user_activity_login"])]
        assert messages[0]["lines"][1]["input"] == {"data": "masked"}
        assert all(i["ddsource"] == "workato" and i["ddtags"] == "env:test" for i in items)

        # The same workspace re-pointed at each other provider gets the same messages in its shape.
        for provider in ("splunk", "sumo", "generic"):
            await accepted(admin, "put_workspace_config", workspace_id="78125",
                           config=http_config(providers, provider, f"acme-{provider}", jobs="status"))
            await send_samples(kafka, prefix, samples, ["job_summary_succeeded", "user_activity_login"])
            got = await providers.wait_items(f"acme-{provider}", 2)
            if provider == "splunk":
                assert all(env_["sourcetype"] == "_json" and "time" in env_ for env_ in got)
                got = [env_["event"] for env_ in got]
            assert sorted(got, key=lambda m: "event" in m) == [compact(samples["job_summary_succeeded"]),
                                                               compact(samples["user_activity_login"])]
        assert providers.violations == []
        reqs = [r for r in providers.received if r.name.startswith("acme")]
        assert all(r.headers.get("Idempotency-Key") for r in reqs)
        generic = [r for r in reqs if r.provider == "generic"]
        assert {r.headers["Idempotency-Key"] for r in generic} == {"j-Qm3xT7pa-Hk2sLd",
                                                                   "ua-5f0c2e9b-7d3a-4d7e-9a51-2b8f4c1e6a10"}


TEMPLATE = ('{"source": "workato", "obj": {{log_message}}, "obj3": {{{log_message}}}, "str": {{{log_message_str}}}, '
            '"now": {{{now}}}, "ms": {{{now_utc}}}, "us": {{{now_utc_micro}}}, "ns": {{{now_utc_nano}}}}')


async def test_templates_size_limit_and_fallback(env, worker_factory, samples, kafka, prefix, providers):
    # The rule applies to the rendered message: this template triples an event, so the job
    # details (1,490 bytes as an event) render over 3,000 bytes and go with lines replaced.
    worker_factory({"STREAMER_MAX_MESSAGE_BYTES": "3000"}).wait_ready()
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="78125", partner_id="p", role="customer")
        await accepted(admin, "register_workspace", workspace_id="5234", partner_id="q", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id="78125",
                       config=http_config(providers, "generic", "tpl", jobs="details", template=TEMPLATE))
        bad = await admin.run("put_workspace_config", workspace_id="5234",
                              config=http_config(providers, "generic", "fallback", template='{"a": {{log_message}}'))
        assert bad["status"] == "accepted_with_warning" and "not valid JSON" in bad["warning"]

    before_ns = __import__("time").time_ns()
    await send_samples(kafka, prefix, samples, ["user_activity_login", "job_details_masked_step",
                                                "job_summary_failed_numeric_id"])
    rendered = await providers.wait_items("tpl", 2)
    by_kind = {("ua" if "event" in m["obj"] else "job"): m for m in rendered}
    login = by_kind["ua"]
    assert login["source"] == "workato"
    assert login["obj"] == login["obj3"] == compact(samples["user_activity_login"])
    assert isinstance(login["str"], str) and orjson.loads(login["str"]) == login["obj"]
    assert isinstance(login["ms"], int) and isinstance(login["us"], int) and isinstance(login["ns"], int)
    assert before_ns // 1_000_000 <= login["ms"] and login["us"] // 1000 == login["ms"] and login["ns"] // 1000 == login["us"]
    assert login["now"].endswith("+00:00")
    # Rendered over the 3,000-byte limit: the job details arrive with lines replaced, every other field kept.
    details = by_kind["job"]["obj"]
    original = compact(samples["job_details_masked_step"])
    assert details["lines"] == "Log lines exceed size limit"
    assert {k: v for k, v in details.items() if k != "lines"} == {k: v for k, v in original.items() if k != "lines"}
    # The invalid template falls back to the plain event.
    plain = await providers.wait_items("fallback", 1)
    assert plain == [compact(samples["job_summary_failed_numeric_id"])]


async def test_provider_batch_limits(env, worker_factory, kafka, prefix, providers):
    worker_factory({"STREAMER_BATCH_MAX": "3000", "STREAMER_BATCH_LINGER_S": "1.0"}).wait_ready()
    async with admin_for(env) as admin:
        for ws, provider in (("1001", "datadog"), ("1002", "splunk"), ("1003", "sumo")):
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws,
                           config=http_config(providers, provider, f"batch-{provider}", gzip=provider != "sumo"))
    dd = [(b"1001", orjson.dumps(job_event(1001, f"j-{i}"))) for i in range(2500)]
    big = [(b"1002", orjson.dumps(job_event(1002, f"j-{i}", pad=20_000))) for i in range(120)]
    sumo = [(b"1003", orjson.dumps(job_event(1003, f"j-{i}", pad=20_000))) for i in range(120)]
    await produce(kafka, prefix + SUMMARY, dd + big + sumo)
    assert len(await providers.wait_items("batch-datadog", 2500, timeout=60)) == 2500
    assert len(await providers.wait_items("batch-splunk", 120)) == 120
    assert len(await providers.wait_items("batch-sumo", 120)) == 120
    assert providers.violations == []
    dd_reqs = [r for r in providers.received if r.name == "batch-datadog"]
    assert all(len(r.items) <= 1000 and r.raw_size <= 5_000_000 for r in dd_reqs)
    assert max(len(r.items) for r in dd_reqs) > 1, "datadog deliveries should be batched"
    assert all(r.headers.get("Content-Encoding") == "gzip" for r in dd_reqs)
    sp_reqs = [r for r in providers.received if r.name == "batch-splunk"]
    assert len(sp_reqs) > 1 and all(r.raw_size <= 1_000_000 for r in sp_reqs)
    ids = sorted(e["event"]["id"] for r in sp_reqs for e in r.items)
    assert ids == sorted(f"j-{i}" for i in range(120))
    assert all(r.raw_size <= 1_000_000 for r in providers.received if r.name == "batch-sumo")


async def test_a_trickle_to_one_destination_goes_in_fuller_requests(env, worker_factory, kafka, prefix, providers):
    """Per-destination linger: four bursts 0.3 s apart, each its own delivery batch. With a
    2 s linger all four share one request: while lingering, the delivery agent keeps up to
    `STREAMER_LINGER_BATCHES_IN_FLIGHT` batches in flight, so it reads on while the first
    waits (with the usual two, the third and fourth went in a second request). Without
    lingering each burst is a request at least."""
    worker_factory({"STREAMER_DESTINATION_LINGER_S": "2"}).wait_ready()
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="1101", partner_id="p", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id="1101",
                       config=http_config(providers, "datadog", "linger-dd"))
    for burst in range(4):
        await produce(kafka, prefix + SUMMARY, [(b"1101", orjson.dumps(job_event(1101, f"j-{burst}-{i}")))
                                                for i in range(5)])
        await asyncio.sleep(0.3)
    items = await providers.wait_items("linger-dd", 20)
    assert sorted(i["message"] for i in items) == sorted(orjson.dumps(job_event(1101, f"j-{b}-{i}")).decode()
                                                         for b in range(4) for i in range(5))
    requests = [len(r.items) for r in providers.received if r.name == "linger-dd"]
    assert requests == [20], requests


async def test_a_400_is_dead_lettered_at_once_and_a_503_is_retried(env, worker_factory, kafka, prefix, providers):
    from tests.providers import Fault

    providers.faults["flaky"] = Fault(statuses=[503, 503], retry_after="0")
    providers.faults["broken"] = Fault(statuses=[400, 400, 400, 400])
    worker_factory({"STREAMER_RETRY_BASE_S": "0.05"}).wait_ready()
    async with admin_for(env) as admin:
        for ws, name in (("2001", "flaky"), ("2002", "broken")):
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws,
                           config=http_config(providers, "generic", name))
    await produce(kafka, prefix + SUMMARY, [(b"2001", orjson.dumps(job_event(2001, "j-flaky"))),
                                            (b"2002", orjson.dumps(job_event(2002, "j-broken")))])
    assert [m["id"] for m in await providers.wait_items("flaky", 1)] == ["j-flaky"]
    assert providers.requests["flaky"] == 3
    dead = await consume(kafka, prefix + "audit.deliveries.dead_letter.v1", 1)
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["eid"] == b"j-broken" and headers["err"].startswith(b"HTTP 400")
    assert orjson.loads(dead[0].value)["id"] == "j-broken"
    await asyncio.sleep(2)
    assert providers.requests["broken"] == 1, "a 400 must never be retried"


async def test_events_only_reach_their_own_workspace_destination(env, worker_factory, kafka, prefix, providers):
    """Random settings and events; an independent oracle says where each event may go."""
    rng = random.Random(7)
    worker_factory().wait_ready()
    partners = {"pa": [], "pb": [], "pc": []}
    own: dict[str, str] = {}
    partner_wide: dict[str, str] = {}
    async with admin_for(env) as admin:
        for i in range(15):
            ws, partner = f"{3000 + i}", rng.choice(list(partners))
            partners[partner].append(ws)
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id=partner,
                           role="admin" if i < 3 else "customer")
            if rng.random() < 0.7:
                own[ws] = f"own-{ws}"
                await accepted(admin, "put_workspace_config", workspace_id=ws,
                               config=http_config(providers, "generic", own[ws]))
        partner_wide["pb"] = "wide-pb"
        await accepted(admin, "put_partner_config", partner_id="pb",
                       config=http_config(providers, "generic", "wide-pb"))
    unregistered = ["3999"]
    events = []
    for n in range(300):
        ws = rng.choice([w for ws_ in partners.values() for w in ws_] + unregistered)
        events.append((ws.encode(), orjson.dumps(job_event(ws, f"j-{n}") if n % 2 else activity_event(ws, f"a-{n}"))))
    await produce(kafka, prefix + SUMMARY, [e for e in events if b'"recipe_id"' in e[1]])
    await produce(kafka, prefix + ACTIVITY, [e for e in events if b'"recipe_id"' not in e[1]])

    def oracle(ws: str) -> str | None:
        partner = next((p for p, members in partners.items() if ws in members), None)
        if partner is None:
            return None
        return partner_wide.get(partner) or own.get(ws)

    expected = [oracle(ws.decode()) for ws, _ in events]
    total = sum(1 for e in expected if e)
    deadline = asyncio.get_running_loop().time() + 40
    while sum(len(r.items) for r in providers.received) < total and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # anything misrouted would arrive too
    got = [(r.name, workspace_of(item)) for r in providers.received for item in r.items]
    assert len(got) == total
    for name, ws in got:
        assert oracle(ws) == name, f"event of workspace {ws} delivered to {name}, expected {oracle(ws)}"


BAD_RECORDS = [
    (SUMMARY, b"5", b"{broken"),
    (SUMMARY, b"5", b"[]"),
    (SUMMARY, b"5", b'"a string"'),
    (SUMMARY, b"5", b"null"),
    (SUMMARY, b"5", b"\xff\xfe"),
    (SUMMARY, b"5", None),
    (SUMMARY, b"5", b"{}"),
    (SUMMARY, b"5", orjson.dumps({k: v for k, v in job_event(5, "j-1").items() if k != "id"})),
    (SUMMARY, b"5", orjson.dumps(job_event(5, "j-1", status="queued"))),
    (SUMMARY, b"5", orjson.dumps(job_event(5, "j-1", recipe_id="x"))),
    (SUMMARY, b"5", orjson.dumps(job_event(5, "j-1", started_at="soon"))),
    (SUMMARY, b"5", orjson.dumps(job_event(5, "j-1", context={}))),
    (SUMMARY, b"5", orjson.dumps(job_event(5, "j-1", id=True))),
    (SUMMARY, b"6", orjson.dumps(job_event(5, "j-1"))),  # key names another workspace
    (DETAILS, b"5", orjson.dumps(job_event(5, "j-1"))),  # no lines
    (DETAILS, b"5", orjson.dumps(job_event(5, "j-1", lines="not an array"))),  # the steps themselves are not validated
    (ACTIVITY, b"5", orjson.dumps({k: v for k, v in activity_event(5, "a").items() if k != "team"})),
    (ACTIVITY, b"5", orjson.dumps(activity_event(5, "a", event="Bad Name"))),
    (ACTIVITY, b"5", orjson.dumps(activity_event(5, "a") | {"timestamp": "yesterday"})),
    (ACTIVITY, b"5", orjson.dumps(activity_event(5, "a") | {"team": {"name": "no id"}})),
    (ACTIVITY, b"5", orjson.dumps(activity_event(5, "a") | {"id": ""})),
]


async def test_bad_records_are_rejected_with_reasons_while_good_ones_flow(env, worker_factory, kafka, prefix,
                                                                          providers):
    worker_factory().wait_ready()
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="5", partner_id="p", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id="5", config=http_config(providers, "generic", "ok"))
    good = 0
    for i, (topic, key, value) in enumerate(BAD_RECORDS):
        await produce(kafka, prefix + topic, [(key, value), (b"5", orjson.dumps(job_event(5, f"good-{i}")))]
                      if topic == SUMMARY else [(key, value)])
        good += topic == SUMMARY
    rejected = await consume(kafka, prefix + "audit.rejected.v1", len(BAD_RECORDS))
    assert len(rejected) == len(BAD_RECORDS)
    sent = {(prefix + t, v) for t, _, v in BAD_RECORDS}
    for r in rejected:
        h = dict(r.headers)
        assert h["reason"], h
        assert (h["source_topic"].decode(), r.value) in sent
        assert int(h["source_offset"]) >= 0 and int(h["source_partition"]) >= 0
    reasons = {dict(r.headers)["reason"].decode() for r in rejected}
    assert len(reasons) >= 18, reasons
    assert len(await providers.wait_items("ok", good)) == good


async def test_big_events_through_the_real_broker(env, worker_factory, kafka, prefix, providers, s3):
    """A 42 MB job-details event (over the default 40 MB limit) arrives with its lines replaced;
    a 6 MB one arrives whole. Both cross the broker twice (raw topic, delivery topic)."""
    bucket = prefix.rstrip(".").lower() + "-big"
    await make_bucket(s3, bucket)
    worker_factory().wait_ready()
    async with admin_for(env) as admin:
        for ws, cfg in (("71", http_config(providers, "generic", "big", jobs="details")),
                        ("72", s3_config(s3, bucket, jobs="details"))):
            await accepted(admin, "register_workspace", workspace_id=ws, partner_id="p", role="customer")
            await accepted(admin, "put_workspace_config", workspace_id=ws, config=cfg)
    step = lambda n, size: {"recipe_line_number": n, "adapter_name": "http", "input": {"blob": "x" * size}}
    huge = job_event(71, "j-huge", lines=[step(n, 1_050_000) for n in range(40)])
    large = job_event(72, "j-large", lines=[step(n, 1_000_000) for n in range(6)])
    assert len(orjson.dumps(huge)) > 42_000_000
    await produce(kafka, prefix + DETAILS, [(b"71", orjson.dumps(huge)), (b"72", orjson.dumps(large))])
    got = await providers.wait_items("big", 1, timeout=90)
    assert got[0]["id"] == "j-huge" and got[0]["lines"] == "Log lines exceed size limit"
    objects = await s3_objects(s3, bucket, 1, timeout=90)
    (body, _), = objects.values()
    assert orjson.loads(body) == large

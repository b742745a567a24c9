"""Destination status: the engine's bookkeeping, merging workers' rows, notifications, `streamer status`."""

from __future__ import annotations

from streamer.settings.model import Configuration, Registration
from streamer.settings.state import SettingsState
from streamer.sinks.base import DELIVERED, Outcome
from streamer.status import (DestinationStatus, StatusBook, StatusTable, merge, notices, notified_row, redact,
                             row_key, status_code)
from streamer.status_cli import select, table_text
from tests.test_engine import ScriptedSink, delivery, engine


async def test_the_engine_reports_successes_failures_parks_dead_letters_and_the_breaker():
    sink = ScriptedSink({"ok": [], "auth": [Outcome(False, False, 'HTTP 401: {"error": "bad api_key=abc123"}')],
                         "down": [Outcome(False, True, "HTTP 503: busy")] * 10})
    book = StatusBook("w1", min_interval_s=0)
    e = engine(sink, [], inline_retries=1, breaker_failures=2, breaker_reset_s=60)
    e.observer = book
    await e.process([delivery("ok", "o1"), delivery("ok", "o2"), delivery("auth", "a1"), delivery("down", "d1")])
    ok, auth, down = book.rows["ok"], book.rows["auth"], book.rows["down"]
    assert (ok.delivered, ok.last_success_ms is not None, ok.failing_since_ms, ok.breaker) == (2, True, None, "closed")
    assert (auth.dead_lettered, auth.last_failure_status, auth.consecutive_failures) == (1, 401, 1)
    assert "abc123" not in auth.last_failure_reason and "api_key=***" in auth.last_failure_reason
    assert (down.failed_attempts, down.parked, down.breaker, down.last_failure_status) == (2, 1, "open", 503)
    # Published rows are keyed per worker; a second batch for "ok" clears nothing else.
    rows = {r.destination_id: r for r in book.due(now=0)}
    assert set(rows) == {"ok", "auth", "down"} and row_key(rows["ok"]) == b"ok/w1"
    assert DestinationStatus.from_json(rows["down"].to_json()) == rows["down"]


def test_rows_are_published_at_most_every_interval_and_refreshed_when_unchanged():
    book = StatusBook("w1", min_interval_s=5, counters_interval_s=5)
    book.attempted("d", "http", "7", 1, [])
    assert [r.destination_id for r in book.due(now=100)] == ["d"]
    book.attempted("d", "http", "7", 1, [])
    assert book.due(now=101) == []  # changed, but too soon
    assert [r.delivered for r in book.due(now=105)] == [2]
    assert book.due(now=200) == [] and len(book.due(now=105 + 3600)) == 1  # hourly refresh
    # Healthy and unused for a day: forgotten (its last row stays on the topic until retention).
    # (Set against the test's clock: `attempted` stamps time.monotonic(), the machine's uptime,
    # which this test's made-up `now` values must not be compared with.)
    book._touched["d"] = 105 + 3 * 3600 - 24 * 3600
    assert book.due(now=105 + 3 * 3600) == [] and book.rows == {}


def test_counters_alone_wait_longer_than_a_change_of_state():
    book = StatusBook("w1", min_interval_s=2, counters_interval_s=30)
    book.attempted("d", "http", "7", 1, [])
    assert len(book.due(now=100)) == 1  # a new destination is news
    book.attempted("d", "http", "7", 5, [])
    assert book.due(now=110) == []  # more deliveries: only counters
    book.attempted("d", "http", "7", 0, ["HTTP 503: busy"])
    assert [r.failed_attempts for r in book.due(now=110)] == [1]  # a failure is news
    book.attempted("d", "http", "7", 1, [])
    assert book.due(now=111) == [] and [r.failing_since_ms for r in book.due(now=112)] == [None]  # so is recovery
    book.parked("d", 3)
    assert book.due(now=120) == [] and [r.parked for r in book.due(now=142)] == [3]
    book.breaker("d", "open")
    assert [r.breaker for r in book.due(now=144)] == ["open"]


def test_redaction_and_status_codes():
    assert redact("network error: https://user:pw@h.example/x?sig=SECRET") == "network error: https://h.example/x?…"
    assert redact('HTTP 403: {"token": "t0k"}') == 'HTTP 403: {"token": "***"}'
    assert status_code("HTTP 401: nope") == 401 and status_code("s3 403: AccessDenied") == 403
    assert status_code("timed out") is None


def row(worker, **kw) -> DestinationStatus:
    return DestinationStatus("workspace:7", worker, type="http", workspace_id="7", **{"updated_ms": 1_000_000, **kw})


def test_workers_rows_are_merged_not_overwritten():
    a = row("a", delivered=10, parked=2, last_success_ms=900_000)
    b = row("b", delivered=5, dead_lettered=1, failed_attempts=3, last_failure_ms=950_000,
            last_failure_status=401, last_failure_reason="HTTP 401", failing_since_ms=940_000,
            consecutive_failures=3, breaker="open")
    m = merge([a, b], now_ms=1_000_000)
    assert (m.delivered, m.parked, m.dead_lettered, m.workers) == (15, 2, 1, 2)
    assert (m.state, m.breaker, m.last_failure_status, m.failing_since_ms, m.consecutive_failures) == (
        "failing", "open", 401, 940_000, 3)
    # Worker a succeeds later: recovered, whatever b said last (b's breaker closed since).
    a2 = row("a", delivered=11, last_success_ms=990_000)
    b2 = DestinationStatus(**{**b.__dict__, "breaker": "closed"})
    assert merge([a2, b2], now_ms=1_000_000).state == "ok"
    # A stale row's open breaker says nothing about now.
    assert merge([a2, b], now_ms=1_000_000 + 3600_000).state == "ok"
    # Nor does a fresh one last written before another worker's success (b stopped, a took over).
    b_stopped = DestinationStatus(**{**b.__dict__, "updated_ms": 960_000})
    a3 = row("a", delivered=12, last_success_ms=980_000, updated_ms=980_000)
    assert merge([a3, b_stopped], now_ms=1_000_000).state == "ok"
    # But one written after it still does.
    assert merge([a3, DestinationStatus(**{**b.__dict__, "updated_ms": 990_000})], now_ms=1_000_000).state == "failing"


def test_the_table_merges_only_what_changed_and_gets_what_a_full_merge_gets():
    import random

    rnd = random.Random(7)
    table = StatusTable()
    now = 1_000_000
    for _ in range(3000):
        now += rnd.choice((0, 500, 5_000, 70_000))
        dest, worker = f"workspace:{rnd.randrange(6)}", rnd.choice("abc")
        if rnd.random() < 0.1:
            table.apply(f"{dest}/{worker}".encode(), None)
        else:
            r = DestinationStatus(dest, worker, type="http", workspace_id=dest[10:], updated_ms=now - rnd.randrange(40_000),
                                  last_success_ms=rnd.choice((None, now - 30_000, now - 1_000)),
                                  last_failure_ms=rnd.choice((None, now - 20_000, now - 2_000)),
                                  breaker=rnd.choice(("closed", "closed", "open", "half_open")),
                                  delivered=rnd.randrange(5))
            table.apply(row_key(r), r.to_json())
        if rnd.random() < 0.3:
            full = {d: merge(list(ws.values()), now) for d, ws in table.rows.items() if ws}
            assert table.merged(now) == full


def test_one_notice_per_state_change_with_a_minimum_interval():
    table = StatusTable()
    failing = row("a", last_failure_ms=950_000, last_failure_reason="HTTP 401", last_failure_status=401,
                  failing_since_ms=940_000, dead_lettered=1)
    table.apply(row_key(failing), failing.to_json())
    [n] = notices(table, 1_000_000, min_interval_s=60)
    assert (n.state, n.reason, n.since_ms, n.status, n.workspace_id) == ("failing", "HTTP 401", 940_000, 401, "7")
    table.apply(*notified_row(n, table.merged(1_000_000)["workspace:7"], 1_000_000))
    assert notices(table, 1_001_000, 60) == []  # announced once
    ok = row("a", last_failure_ms=950_000, last_success_ms=1_010_000, dead_lettered=1, updated_ms=1_010_000)
    table.apply(row_key(ok), ok.to_json())
    assert notices(table, 1_020_000, 60) == []  # recovered, but within the minimum interval
    [r] = notices(table, 1_061_000, 60)
    assert r.state == "recovered"
    # Failing without an open breaker or a dead letter (retries still going) is not announced.
    quiet = StatusTable()
    retrying = row("a", last_failure_ms=950_000, failed_attempts=2)
    quiet.apply(row_key(retrying), retrying.to_json())
    assert notices(quiet, 1_000_000, 60) == []


def test_status_selects_a_workspaces_effective_destination_and_a_partners():
    state = SettingsState()

    def put(key: str, value: dict, offset: int) -> None:
        import orjson
        state.apply(key.encode(), orjson.dumps(value), offset)

    cfg = Configuration.model_validate({"destination": {"type": "http", "provider": "generic",
                                                        "url": "https://logs.example.com/x"}}).model_dump(mode="json")
    reg = Registration.model_validate({"workspace_id": "7", "partner_id": "p", "role": "customer"}).model_dump(mode="json")
    put("ws/7", {"registration": reg, "config": cfg}, 0)
    table = StatusTable()
    for r in (row("a", last_success_ms=900_000),
              DestinationStatus("workspace:8", "a", last_failure_ms=1, dead_lettered=1, updated_ms=1_000_000)):
        table.apply(row_key(r), r.to_json())
    rows, note = select(table, state, workspace="7", now_ms=1_000_000)
    assert [r.destination_id for r in rows] == ["workspace:7"] and note is None
    assert select(table, state, workspace="9")[1].startswith("workspace 9 is not streamed")
    assert [r.destination_id for r in select(table, state, partner="p", now_ms=1_000_000)[0]] == ["workspace:7"]
    assert [r.destination_id for r in select(table, state, failing=True, now_ms=1_000_000)[0]] == ["workspace:8"]
    text = table_text(select(table, state, now_ms=1_000_000)[0])
    assert text.splitlines()[0].startswith("DESTINATION") and "workspace:8" in text


# -- the test command (rules only; the delivery is tested end to end) -------------------------

def test_a_test_command_targets_the_effective_the_partner_wide_or_the_given_destination():
    from datetime import datetime, timezone

    import orjson

    from streamer.admin import build_command
    from streamer.settings.rules import Policy, decide

    policy = Policy({"k": b"k" * 32}, {}, allow_private_destinations=True, command_max_age_s=300)
    now = datetime.now(timezone.utc)
    state = SettingsState()
    dest = {"type": "http", "provider": "generic", "url": "https://logs.example.com/ws7"}
    reg = {"workspace_id": "7", "partner_id": "p", "role": "customer", "external_id": None}
    state.apply(b"ws/7", orjson.dumps({"registration": reg, "config": {"destination": dest}}), 0)

    def test(**fields):
        return decide(state, orjson.dumps(build_command("test_destination", fields, "ops", "k", b"k" * 32)),
                      5, policy, now)

    d = test(workspace_id="7")
    assert d.status == "accepted" and d.test.destination_id == "workspace:7" and d.row_key is None
    assert d.test.check == "write" and test(workspace_id="7", check="probe").test.check == "probe"
    assert test(workspace_id="7", check="head").reason.endswith("check': Input should be 'write' or 'probe'")
    assert b"ws7" in d.test.destination
    assert test(workspace_id="8").reason.startswith("workspace 8 has no effective destination")
    assert test(partner_id="p").reason == "partner p has no enabled partner-wide configuration"
    assert test().reason == "a test needs exactly one of workspace_id and partner_id"
    other = {"enabled": False, "destination": {**dest, "url": "https://other.example.com/x"}}
    d = test(partner_id="p", config=other)  # before saving it, even disabled
    assert d.test.destination_id == "partner:p" and b"other.example.com" in d.test.destination
    bad = {"destination": {**dest, "provider": "datadog"}}
    assert test(workspace_id="7", config=bad).reason == "a datadog destination needs api_key"


def test_the_sinks_status_wins_over_reading_it_from_the_text():
    book = StatusBook("w1", min_interval_s=0)
    book.attempted("s3d", "s3", "7", 0, ["s3 NoSuchBucket: The specified bucket does not exist"], [404])
    book.attempted("h", "http", "7", 0, ["HTTP 503: busy"])
    rows = {r.destination_id: r for r in book.due(now=1)}
    assert rows["s3d"].last_failure_status == 404 and rows["h"].last_failure_status == 503

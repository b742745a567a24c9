"""The delivery engine with an in-memory sink and produce: outcomes, breaker, deadline, horizon."""

from __future__ import annotations

import asyncio

from streamer.produce import Refused
from streamer.sinks.base import DELIVERED, Delivery, Outcome, now_ms
from streamer.sinks.engine import Breaker, DeliveryEngine, EngineConfig


class ScriptedSink:
    def __init__(self, script):
        self.script = script  # destination id -> list of outcomes (or "hang", or an exception)
        self.calls: list[str] = []
        self.sent: list[tuple[str | None, str]] = []  # (destination url, event id)

    async def send(self, destination, deliveries):
        dest = deliveries[0].destination_id
        self.calls.append(dest)
        self.sent.extend((destination.get("url"), d.event_id) for d in deliveries)
        step = self.script[dest].pop(0) if self.script[dest] else DELIVERED
        if step == "hang":
            await asyncio.sleep(3600)
        if isinstance(step, Exception):
            raise step
        return [step] * len(deliveries)

    async def close(self):
        pass


def delivery(dest: str, eid: str, destination: bytes = b'{"type": "http"}') -> Delivery:
    return Delivery(destination_id=dest, destination=destination, workspace_id="w", event_id=eid, kind="job_summary",
                    message=b"{}")


def engine(sink, produced, refuse=lambda topic, value: False, **cfg):
    async def produce(records):
        out = []
        for topic, key, value, headers in records:
            if refuse(topic, value):
                out.append(Refused("MessageSizeTooLargeError"))
                continue
            produced.append((topic, key.decode(), dict(headers)))
            out.append(object())
        return out

    return DeliveryEngine("http", sink, produce, EngineConfig(retry_topic="retry", dead_letter_topic="dlq",
                                                              retry_base_s=0.001, **cfg))


async def test_outcomes_decide_delivered_parked_or_dead_lettered():
    retry = Outcome(False, True, "HTTP 503")
    sink = ScriptedSink({"ok": [], "flaky": [retry, DELIVERED], "down": [retry] * 10,
                         "bad": [Outcome(False, False, "HTTP 400")], "bug": [KeyError("bucket")] * 10})
    produced = []
    items = [delivery(d, f"{d}-1") for d in ("ok", "flaky", "down", "bad", "bug")]
    await engine(sink, produced, inline_retries=2).process(items)
    assert all(d.settled for d in items)
    where = {h["eid"].decode(): topic for topic, _, h in produced}
    assert where == {"down-1": "retry", "bad-1": "dlq", "bug-1": "retry"}
    assert sink.calls.count("flaky") == 2 and sink.calls.count("bad") == 1 and sink.calls.count("down") == 3
    assert b"internal error: KeyError" in [h for t, _, h in produced if h["eid"] == b"bug-1"][0]["hist"]


async def test_a_hanging_destination_is_parked_at_the_deadline_and_its_breaker_opens():
    sink = ScriptedSink({"hang": ["hang", "hang"], "ok": []})
    produced = []
    e = engine(sink, produced, deadline_s=0.2, breaker_failures=1, breaker_reset_s=60)
    await e.process([delivery("hang", "h1"), delivery("ok", "o1")])
    assert [(t, h["eid"]) for t, _, h in produced] == [("retry", b"h1")]
    await e.process([delivery("hang", "h2")])  # breaker open: parked without a call
    assert sink.calls.count("hang") == 1 and produced[-1][2]["eid"] == b"h2"


async def test_past_the_horizon_a_delivery_is_dead_lettered():
    sink = ScriptedSink({"down": [Outcome(False, True, "HTTP 503")] * 10})
    produced = []
    d = delivery("down", "old")
    d.first_attempt_ms = 1  # first tried in 1970
    await engine(sink, produced, inline_retries=0).process([d])
    assert produced[0][0] == "dlq" and b"retry horizon" in produced[0][2]["err"]


def test_breaker_half_opens_after_the_reset():
    b = Breaker()
    for _ in range(3):
        b.record(False, threshold=3)
    assert b.is_open and not b.allow(reset_s=60)
    assert b.allow(reset_s=0)  # reset elapsed: one trial
    b.record(False, threshold=3)
    assert b.is_open  # a failed trial re-opens at once
    b.record(True, threshold=3)
    assert not b.is_open


async def test_one_id_with_two_destinations_in_a_batch_sends_each_where_it_was_routed():
    """A settings change between two events of one workspace: same id, different destinations."""
    sink = ScriptedSink({"workspace:7": []})
    old, new = b'{"type": "http", "url": "https://old"}', b'{"type": "http", "url": "https://new"}'
    await engine(sink, []).process([delivery("workspace:7", "e1", old), delivery("workspace:7", "e2", new),
                                    delivery("workspace:7", "e3", old)])
    assert sorted(sink.sent) == [("https://new", "e2"), ("https://old", "e1"), ("https://old", "e3")]


class PerRequestSink:
    """Sends each delivery as its own request taking `each_s`, `limit` at a time, and
    records each outcome on the delivery as it lands, as the real sinks do."""

    def __init__(self, each_s: float, limit: int):
        self.each_s, self.limit = each_s, limit
        self.delivered: list[str] = []

    async def send(self, destination, deliveries):
        sem = asyncio.Semaphore(self.limit)

        async def one(d):
            async with sem:
                await asyncio.sleep(self.each_s)
                self.delivered.append(d.event_id)
                d.outcome = DELIVERED
                return DELIVERED

        return list(await asyncio.gather(*(one(d) for d in deliveries)))

    async def close(self):
        pass


async def test_the_deadline_parks_only_what_was_not_delivered_and_counts_an_attempt():
    """100 deliveries of 50 ms, 4 at a time, a 0.5 s deadline: before, all 100 were parked
    with attempt count 0 on every pass, so a slow but healthy destination got duplicates
    for 7 days and then its events were dead-lettered."""
    sink = PerRequestSink(0.05, 4)
    produced = []
    items = [delivery("slow", f"e{i}") for i in range(100)]
    await engine(sink, produced, deadline_s=0.5).process(items)
    parked = {h["eid"].decode() for t, _, h in produced if t == "retry"}
    assert sink.delivered and not parked & set(sink.delivered)
    assert parked | set(sink.delivered) >= {d.event_id for d in items}
    assert all(int(h["att"]) == 1 for t, _, h in produced if t == "retry")


async def test_retry_after_is_capped_by_the_maximum_backoff():
    sink = ScriptedSink({"slow": [Outcome(False, True, "HTTP 429", retry_after=86400)] * 10})
    produced = []
    await engine(sink, produced, inline_retries=0, retry_max_backoff_s=2).process([delivery("slow", "s1")])
    (topic, _, h), = produced
    assert topic == "retry"
    assert int(h["next"]) - now_ms() <= 2_500


async def test_parks_while_the_breaker_is_open_count_toward_the_horizon():
    sink = ScriptedSink({"down": [Outcome(False, True, "HTTP 503")] * 10})
    produced = []
    e = engine(sink, produced, inline_retries=0, breaker_failures=1, breaker_reset_s=3600)
    first = delivery("down", "d1")
    await e.process([first])
    again = Delivery.from_record(b"down", b"{}", list(produced[-1][2].items()))
    await e.process([again])  # breaker open: parked without a call, but it was an attempt
    assert sink.calls.count("down") == 1
    assert int(produced[-1][2]["att"]) == int(produced[0][2]["att"]) + 1


async def test_a_delivery_the_broker_refuses_to_park_is_dead_lettered_and_a_refused_dead_letter_is_cut_down():
    sink = ScriptedSink({"down": [Outcome(False, True, "HTTP 503")] * 10})
    produced = []
    big = delivery("down", "big")
    big.message = b"x" * 200_000
    # The broker refuses the full record everywhere; only a cut-down copy fits.
    await engine(sink, produced, refuse=lambda topic, value: len(value) > 100_000,
                 inline_retries=0).process([big])
    (topic, _, h), = produced
    assert topic == "dlq" and big.settled
    assert h["truncated"] == b"200000" and b"MessageSizeTooLarge" in h["truncated_reason"]


async def test_idle_destinations_forget_their_limit_and_closed_breaker_but_not_an_open_one():
    sink = ScriptedSink({"busy": [], "idle": [], "down": [Outcome(False, True, "HTTP 503")] * 10})
    e = engine(sink, [], inline_retries=0, breaker_failures=1, breaker_reset_s=3600, idle_evict_s=0.05)
    await e.process([delivery("idle", "i1"), delivery("down", "d1")])
    assert {"idle", "down"} <= set(e.limits) | set(e.breakers)
    await asyncio.sleep(0.1)
    e._next_sweep = 0
    await e.process([delivery("busy", "b1")])
    assert "idle" not in e.breakers and "idle" not in e.limits
    assert e.breakers["down"].is_open  # an open breaker is kept: it still protects the others


# -- per-destination linger -------------------------------------------------------------------

async def test_a_destination_s_records_from_two_batches_in_flight_go_in_one_request():
    sink = ScriptedSink({"trickle": [], "other": []})
    e = engine(sink, [], linger_s=0.3)
    first = [delivery("trickle", "t1"), delivery("other", "o1")]
    second = [delivery("trickle", "t2"), delivery("trickle", "t3")]
    one = asyncio.create_task(e.process(first))
    await asyncio.sleep(0.05)
    await asyncio.gather(one, e.process(second))
    assert sink.calls.count("trickle") == 1 and sorted(eid for _, eid in sink.sent if eid[0] == "t") == ["t1", "t2", "t3"]
    assert all(d.settled for d in first + second) and not e._lingering


async def test_a_full_group_goes_without_waiting_for_the_linger():
    sink = ScriptedSink({"busy": []})
    e = engine(sink, [], linger_s=3600, linger_max_items=3)
    await asyncio.wait_for(e.process([delivery("busy", f"b{i}") for i in range(3)]), 10)
    e2 = engine(ScriptedSink({"big": []}), [], linger_s=3600, linger_max_bytes=1000)
    big = delivery("big", "b")
    big.message = b"x" * 1000
    await asyncio.wait_for(e2.process([big]), 10)
    assert big.settled


async def test_a_batch_tried_again_goes_alone_and_at_once():
    """`linger=False` (a retried batch, an isolated record): sent at once, never joined
    with another caller's lingering records, so a poison record is found on its own."""
    sink = ScriptedSink({"d": []})
    e = engine(sink, [], linger_s=3600)
    waiting = asyncio.create_task(e.process([delivery("d", "lingering")]))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(e.process([delivery("d", "alone")], linger=False), 10)
    assert sink.sent == [(None, "alone")] and not waiting.done()
    waiting.cancel()


async def test_a_caller_cancelled_while_lingering_does_not_cancel_the_others_records():
    sink = ScriptedSink({"d": []})
    e = engine(sink, [], linger_s=0.2)
    gone = asyncio.create_task(e.process([delivery("d", "gone")]))
    await asyncio.sleep(0.05)
    stays = asyncio.create_task(e.process([delivery("d", "stays")]))
    await asyncio.sleep(0.01)
    gone.cancel()
    await stays
    assert sorted(eid for _, eid in sink.sent) == ["gone", "stays"]  # at least once: "gone" is read again


async def test_the_deadline_runs_from_when_a_lingering_group_goes():
    sink = ScriptedSink({"hang": ["hang"]})
    produced = []
    e = engine(sink, produced, linger_s=0.2, deadline_s=0.3)
    await asyncio.gather(e.process([delivery("hang", "h1")]), e.process([delivery("hang", "h2")]))
    assert sink.calls == ["hang"] and sorted(h["eid"] for t, _, h in produced if t == "retry") == [b"h1", b"h2"]


async def test_the_open_breakers_gauge_follows_breakers_that_open_and_close():
    from streamer import metrics

    gauge = metrics.breakers_open.labels("http")
    sink = ScriptedSink({"down": [Outcome(False, True, "HTTP 503")], "ok": []})
    e = engine(sink, [], inline_retries=0, breaker_failures=1, breaker_reset_s=0.05)
    await e.process([delivery("down", "d1"), delivery("ok", "o1")])
    await e.process([delivery("ok", "o2")])  # the gauge is set as a batch starts
    assert gauge._value.get() == 1
    await e.process([delivery("ok", "o3")])  # nothing opened or closed: the same
    assert gauge._value.get() == 1
    await asyncio.sleep(0.1)
    await e.process([delivery("down", "d2")])  # the trial passes: closed
    await e.process([delivery("ok", "o4")])
    assert gauge._value.get() == 0

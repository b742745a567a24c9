"""The delivery engine with an in-memory sink and produce: outcomes, breaker, deadline, horizon."""

from __future__ import annotations

import asyncio

from streamer.sinks.base import DELIVERED, Delivery, Outcome
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


def engine(sink, produced, **cfg):
    async def produce(records):
        produced.extend((topic, key.decode(), dict(headers)) for topic, key, _value, headers in records)

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

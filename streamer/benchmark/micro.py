"""`python -m streamer.benchmark micro`: the pure hot path in µs per event.

Per event: `route()` (parse and validate, resolve the effective configuration, render the
message and headers) and the provider's wire encoding (here Datadog, as in the pipeline
benchmark), on the pipeline's event mix and settings. Each stage is timed over whole passes
of the same events, several times; the median pass is reported. No I/O.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import orjson

from streamer.benchmark.workload import MIX, build_settings, datadog_destination, event_bytes, raw_events
from streamer.events.parse import parse_event
from streamer.routing import Routed, message_json, route
from streamer.sinks.base import Delivery
from streamer.sinks.http import datadog
from streamer.sinks.http.service import endpoint

MAX_MESSAGE_BYTES = 40 * 1024 * 1024
BATCH = 500  # STREAMER_BATCH_MAX: the delivery agent encodes per batch and destination


def _median_pass(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls, in seconds (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _each(fn: Callable[[Any], Any], items: list) -> None:
    for item in items:
        fn(item)


def run_micro(events: int = 3000, repeats: int = 7, keys: dict[str, bytes] | None = None,
              profile: bool = False) -> dict[str, Any]:
    keys = keys or {"bench": b"b" * 32}
    settings = build_settings(datadog_destination("http://127.0.0.1:9", "bench-api-key"), encryption_keys=keys)
    state = settings.state
    records = [(kind, event_bytes(kind, ws, seq, 1_700_000_000_000_000_000), ws.encode())
               for kind, ws, seq in raw_events(settings, events)]
    by_kind: dict[str, list] = defaultdict(list)
    for r in records:
        by_kind[r[0]].append(r)

    def route_all(recs=records):
        # Results are dropped as they come, as the routing agent drops parsed events: keeping
        # thousands of parsed bodies alive would time the garbage collector, not the hot path.
        for kind, value, key in recs:
            route(state, kind, value, key, MAX_MESSAGE_BYTES, 1_700_000_000_000)

    routed = [route(state, kind, value, key, MAX_MESSAGE_BYTES, 1_700_000_000_000) for kind, value, key in records]
    assert all(isinstance(r, Routed) for r in routed), "every benchmark event must be routed"

    # What the delivery agent encodes: per batch of BATCH records, one group per destination.
    groups: list[tuple[dict, list[Delivery]]] = []
    for start in range(0, len(routed), BATCH):
        per_dest: dict[bytes, list[Delivery]] = defaultdict(list)
        for r in routed[start:start + BATCH]:
            per_dest[r.key].append(Delivery.from_record(r.key, r.value, r.headers))
        for items in per_dest.values():
            dest = orjson.loads(items[0].destination)
            groups.append(({**dest, "url": endpoint(dest)}, items))
    auth = {"DD-API-KEY": "bench-api-key"}

    def encode_all():
        for dest, items in groups:
            datadog.encode(dest, auth, items)

    gc.collect()
    n = len(records)
    if profile:
        return {"profile": _profile(lambda: [route_all(), encode_all()], repeats)}
    out: dict[str, Any] = {"events": n, "repeats": repeats, "destinations_per_batch":
                           round(len(groups) / ((n + BATCH - 1) // BATCH), 1)}
    route_s = _median_pass(route_all, repeats)
    encode_s = _median_pass(encode_all, repeats)
    out["route_us"] = route_s / n * 1e6
    out["encode_us"] = encode_s / n * 1e6
    out["hot_path_us"] = out["route_us"] + out["encode_us"]
    per_kind = {}
    for kind, _ in MIX:
        recs = by_kind[kind]
        parse_s = _median_pass(lambda: _each(lambda r: parse_event(*r), recs), repeats)
        parsed = [parse_event(*r) for r in recs]
        render_s = _median_pass(lambda: _each(lambda e: message_json(e, MAX_MESSAGE_BYTES), parsed), repeats)
        kind_route_s = _median_pass(lambda: route_all(recs), repeats)
        # What orjson alone costs per event for the whole record: parse it, serialise it, escape
        # it into a Datadog item. The floor of a path that parses everything; job details
        # have not taken that path since their lines pass through as text (the Eighth round).
        bodies = [orjson.loads(v) for _, v, _ in recs]
        messages = [orjson.dumps(b) for b in bodies]
        json_s = (_median_pass(lambda: _each(lambda r: orjson.loads(r[1]), recs), repeats)
                  + _median_pass(lambda: _each(orjson.dumps, bodies), repeats)
                  + _median_pass(lambda: _each(lambda m: orjson.dumps(m.decode()), messages), repeats))
        per_kind[kind] = {"events": len(recs), "bytes": round(statistics.mean(len(v) for _, v, _ in recs)),
                          "route_us": kind_route_s / len(recs) * 1e6, "parse_us": parse_s / len(recs) * 1e6,
                          "serialise_us": render_s / len(recs) * 1e6, "orjson_us": json_s / len(recs) * 1e6}
    out["per_kind"] = per_kind
    out["orjson_floor_us"] = sum(k["orjson_us"] * k["events"] for k in per_kind.values()) / n
    return out


def _profile(fn: Callable[[], Any], repeats: int) -> str:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(repeats):
        fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def report(r: dict[str, Any]) -> str:
    if "profile" in r:
        return r["profile"]
    lines = [f"hot path, {r['events']} events of the pipeline mix, median of {r['repeats']} passes "
             f"({r['destinations_per_batch']} destinations per batch of {BATCH}):",
             f"  route()            {r['route_us']:7.2f} µs/event",
             f"  Datadog encoding   {r['encode_us']:7.2f} µs/event",
             f"  hot path           {r['hot_path_us']:7.2f} µs/event   (target ≤ 15)",
             f"  orjson alone       {r['orjson_floor_us']:7.2f} µs/event   (whole records: loads + dumps + "
             f"Datadog string escaping)",
             "  by kind (route = parse + resolve + serialise + render + headers):"]
    for kind, k in r["per_kind"].items():
        lines.append(f"    {kind:14} {k['bytes']:6} B  route {k['route_us']:6.2f}  parse {k['parse_us']:6.2f}"
                     f"  serialise {k['serialise_us']:5.2f}  orjson alone {k['orjson_us']:6.2f} µs")
    return "\n".join(lines)

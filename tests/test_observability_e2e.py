"""Health, readiness and Prometheus metrics of a real worker."""

from __future__ import annotations

import asyncio
import time

import orjson

from streamer import topics as T
from tests.support import accepted, activity_event, admin_for, http_config, job_event, produce


def samples_of(worker) -> dict[str, float]:
    _, text = worker.get("/metrics")
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def total(samples: dict[str, float], name: str, **labels) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name
               and all(f'{a}="{b}"' in k for a, b in labels.items()))


async def test_readiness_is_false_while_settings_recover_and_true_after(env, worker_factory, kafka, prefix):
    rows = [(f"ws/r{i}".encode(), orjson.dumps({"registration": {"workspace_id": f"r{i}", "partner_id": "p",
                                                                  "role": "customer", "external_id": None},
                                                 "config": None}))
            for i in range(60_000)]
    await produce(kafka, prefix + T.SETTINGS_TABLE, rows)
    w = worker_factory()
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        code, body = w.get("/ready")
        if code:
            seen.append((code, orjson.loads(body)["settings_ready"]))
        if code == 200:
            break
        await asyncio.sleep(0.01)
    assert w.get("/health")[0] == 200
    assert (503, False) in seen, f"readiness must be false during recovery, saw {sorted(set(seen))}"
    assert seen[-1] == (200, True)
    ready = orjson.loads(w.get("/ready")[1])
    assert ready["settings_rows_recovered"] == 60_000
    assert ready["group_joined"] is True and ready["partitions_assigned"] > 0  # ready means in the group
    # A normal start logs nothing at error level: expected start-up states are info.
    errors = [line for line in w.log().splitlines() if '"level":"error"' in line]
    assert errors == [], errors[:3]


async def test_metrics_move_with_traffic_and_carry_no_ids(env, worker_factory, kafka, prefix, providers):
    w = worker_factory()
    w.wait_ready()
    before = samples_of(w)
    async with admin_for(env) as admin:
        await accepted(admin, "register_workspace", workspace_id="61001", partner_id="pm", role="customer")
        await accepted(admin, "put_workspace_config", workspace_id="61001",
                       config=http_config(providers, "datadog", "metrics", api_key="dd-key-456"))
    await produce(kafka, prefix + T.JOBS_SUMMARY, [(b"61001", orjson.dumps(job_event(61001, f"m{i}"))) for i in range(20)]
                  + [(b"61002", orjson.dumps(job_event(61002, "unconfigured"))), (b"61001", b"not json")])
    await produce(kafka, prefix + T.USER_ACTIVITY, [(b"61001", orjson.dumps(activity_event(61001, "ua-m1")))])
    await providers.wait_items("metrics", 21)
    await asyncio.sleep(0.5)
    after = samples_of(w)
    assert total(after, "streamer_events_consumed_total", kind="job_summary") - \
        total(before, "streamer_events_consumed_total", kind="job_summary") == 22
    assert total(after, "streamer_events_routed_total", kind="job_summary", destination_type="http") == 20
    assert total(after, "streamer_events_routed_total", kind="user_activity") == 1
    assert total(after, "streamer_events_skipped_total", reason="unconfigured") == 1
    assert total(after, "streamer_events_rejected_total", kind="job_summary") == 1
    assert total(after, "streamer_deliveries_total", destination_type="http", outcome="delivered") == 21
    assert total(after, "streamer_delivery_latency_seconds_count", destination_type="http") == 21
    assert total(after, "streamer_settings_commands_total", status="accepted") == 2
    assert total(after, "streamer_settings_workspaces") == 1 and total(after, "streamer_settings_ready") == 1
    assert total(after, "streamer_settings_version") >= 1
    assert any(k.startswith("streamer_consumer_lag{") for k in after)
    assert total(after, "streamer_worker_info", event_loop="uvloop") == 1  # the default, as it runs
    text = w.get("/metrics")[1].decode()
    for forbidden in ("61001", "workspace:", "dd-key-456", "metrics\""):
        assert forbidden not in text, forbidden
    # Logs are JSON lines that carry ids, never secrets.
    lines = [orjson.loads(line) for line in w.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any(line.get("command_id") for line in lines)
    assert "dd-key-456" not in w.log()

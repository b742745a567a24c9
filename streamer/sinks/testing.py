"""`streamer settings test`: what a test command does to a destination, through its real sink.

`write` (the default) sends one synthetic event through the sink itself, not the engine, so
a test never trips a breaker, parks or dead-letters: object stores get a real object under
the destination's prefix, REST providers a real POST. `probe` asks the destination without
writing where the provider offers a way: S3 HeadBucket, Azure Blob Get Container
Properties, GCS Get Bucket, Datadog's API key validation, Splunk HEC's health endpoint.
Sumo Logic, generic HTTP and Azure Monitor have none, so their probe writes the test event
after all, and the reported check says so: an admin who asked for no write learns that one
was made, and why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from streamer.notifications import ms_to_datetime
from streamer.routing import OBJECT_STORES
from streamer.sinks.azure_blob import request as azure_blob
from streamer.sinks.base import Delivery, Outcome, now_ms
from streamer.sinks.gcs import request as gcs
from streamer.sinks.http.service import PROVIDERS
from streamer.sinks.s3 import request as s3
from streamer.status import redact

TEST_EVENT = "streamer_destination_test"
_WRITES = {"s3": s3.WRITE_CHECK, "azure_blob": azure_blob.WRITE_CHECK, "gcs": gcs.WRITE_CHECK,
           "azure_monitor": "azure_monitor POST"}
_PROBES = {"s3": s3.PROBE_CHECK, "azure_blob": azure_blob.PROBE_CHECK, "gcs": gcs.PROBE_CHECK}


@dataclass(frozen=True, slots=True)
class TestReport:
    """What a test did and how the destination answered (the test command's result)."""

    __test__ = False  # not a pytest test class

    check: str  # what was done: "s3 PutObject", "datadog validate", "sumo POST (no probe endpoint)"
    ok: bool
    probe: bool  # read-only: nothing was written
    status: int | None = None  # the provider's HTTP status, when it answered
    reason: str | None = None  # why it failed, redacted


def _name(destination_type: str, destination: dict[str, Any]) -> str:
    return destination.get("provider", "generic") if destination_type == "http" else destination_type


def write_check(destination_type: str, destination: dict[str, Any]) -> str:
    if destination_type == "http":
        return f"{_name(destination_type, destination)} POST"
    return _WRITES.get(destination_type, f"{destination_type} write")


def probe_check(destination_type: str, destination: dict[str, Any]) -> str | None:
    """The read-only check a destination offers, or None (then a probe writes after all)."""
    if destination_type == "http":
        return getattr(PROVIDERS.get(_name(destination_type, destination)), "PROBE_CHECK", None)
    return _PROBES.get(destination_type)


def planned_check(destination_type: str, destination: dict[str, Any], mode: str) -> tuple[str, bool]:
    """(the check a test in `mode` makes, whether it is read-only)."""
    if mode == "probe":
        probe = probe_check(destination_type, destination)
        if probe is not None:
            return probe, True
        return (f"{write_check(destination_type, destination)} ({_name(destination_type, destination)} has no "
                f"probe endpoint: the test event was written)"), False
    return write_check(destination_type, destination), False


def test_delivery(target, command_id: str, at_ms: int) -> Delivery:
    """The synthetic event: an id and a key of its own, so it is never mistaken for (or
    overwrites) a real event."""
    event_id = f"streamer-test-{command_id}"
    message = orjson.dumps({"id": event_id, "event": TEST_EVENT, "timestamp": ms_to_datetime(at_ms).isoformat(),
                            "team": {"id": target.workspace_id},
                            "message": "test event sent by `streamer settings test`; safe to ignore"})
    key = (target.s3_prefix.rstrip("/") + "/" if target.s3_prefix else "") + f"streamer-test/{event_id}.json"
    return Delivery(destination_id=target.destination_id, destination=target.destination,
                    workspace_id=target.workspace_id, event_id=event_id, kind="test", message=message,
                    object_key=key if target.destination_type in OBJECT_STORES else None)


async def run_test(sink: Any, target, command_id: str, timeout_s: float) -> TestReport:
    """Probe or write, as `target.check` asks, within `timeout_s`."""
    destination = orjson.loads(target.destination)
    check, probe = planned_check(target.destination_type, destination, target.check)
    try:
        async with asyncio.timeout(timeout_s):
            if probe:
                outcome = await sink.probe(destination, target.destination_id)
            else:
                [outcome] = await sink.send(destination, [test_delivery(target, command_id, now_ms())])
        return _report(check, probe, outcome)
    except TimeoutError:
        return TestReport(check, False, probe, None, f"no answer within {timeout_s:g}s")
    except Exception as e:  # noqa: BLE001 - the reason goes back to the admin
        return TestReport(check, False, probe, None, redact(f"{type(e).__name__}: {e}"))


def _report(check: str, probe: bool, outcome: Outcome) -> TestReport:
    return TestReport(check, outcome.ok, probe, outcome.status, None if outcome.ok else redact(outcome.error))

"""What every sink shares: the delivery record, the outcome of an attempt, the Sink interface.

A delivery record on a delivery topic is key = destination id, value = the rendered message
(exactly the bytes the destination gets), and headers with everything else. Keeping the
message as the value means no sink parses or re-encodes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

@dataclass(slots=True)
class Delivery:
    destination_id: str
    destination: bytes  # JSON of the destination as stored; secrets are encrypted envelopes
    workspace_id: str
    event_id: str
    kind: str
    message: bytes
    produced_ms: int = 0  # when the raw event was produced, for the end-to-end latency metric
    object_key: str | None = None
    attempts: int = 0  # attempts made before this one
    first_attempt_ms: int = 0
    errors: list[str] = field(default_factory=list)
    settled: bool = False  # delivered, parked or dead-lettered in this pass
    # The outcome of the request in flight, set by the sink the moment it is known, so a
    # group cancelled at the delivery deadline parks only what was not delivered.
    outcome: "Outcome | None" = None

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers) -> "Delivery":
        h = {k: v for k, v in (headers or ())}
        return cls(
            destination_id=(key or b"").decode(),
            destination=h.get("dest", b"{}"),
            workspace_id=h.get("ws", b"").decode(),
            event_id=h.get("eid", b"").decode(),
            kind=h.get("kind", b"").decode(),
            message=value or b"",
            produced_ms=int(h.get("ts", b"0") or 0),
            object_key=h["okey"].decode() if "okey" in h else None,
            attempts=int(h.get("att", b"0")),
            first_attempt_ms=int(h.get("first", b"0")),
            errors=orjson.loads(h["hist"]) if "hist" in h else [],
        )

    def headers(self, **extra: bytes) -> list[tuple[str, bytes]]:
        out = [("dest", self.destination), ("ws", self.workspace_id.encode()), ("eid", self.event_id.encode()),
               ("kind", self.kind.encode()), ("ts", str(self.produced_ms).encode()),
               ("att", str(self.attempts).encode()), ("first", str(self.first_attempt_ms).encode()),
               ("hist", orjson.dumps(self.errors[-10:]))]
        if self.object_key is not None:
            out.append(("okey", self.object_key.encode()))
        out.extend(extra.items())
        return out


@dataclass(slots=True, frozen=True)
class Outcome:
    ok: bool
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None  # seconds, from the destination's Retry-After
    # The provider's HTTP status when it answered: `settings test` reports it as such, so
    # an admin need not read it out of the error text (S3 names its error code there).
    status: int | None = None


DELIVERED = Outcome(True)


def now_ms() -> int:
    return int(time.time() * 1000)


class Sink(Protocol):
    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        """Deliver, returning one outcome per delivery, in order. Never raises for destination
        errors: those are outcomes, so the engine decides retry or dead letter."""

    async def close(self) -> None: ...

"""Per-destination status: what each worker saw, how readers merge it, when to notify.

Pure bookkeeping, no I/O: the delivery engine reports to a `StatusBook` through the small
`DeliveryObserver` interface; the app publishes the book's due rows to the compacted topic
`audit.destinations.status.v1`; `streamer status` and the notifier read that topic back.

Why one row per worker (key `<destination id>/<worker id>`) and merging on read: several
workers deliver to the same destination (its deliveries spread over partitions), and each
knows only its own attempts. A row per worker is written by one writer only, so no worker
overwrites another's figures and no read-modify-write across workers is needed; readers
(`merge`) sum the counters and take the latest times. The worker id is unique per process
run, so a restarted worker starts a new row instead of resetting an old one's counters; the
topic is `compact,delete` with a 7-day retention, and a worker re-publishes the rows it
still holds every hour, so rows of workers long gone expire and the figures read as
"over the last week".

Secrets never reach a row: reasons are the sink's error text (a status line and the
provider's answer, never request headers), with URL credentials and query strings removed
and `key=`/`token=`-like values masked.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import orjson

REFRESH_S = 3600.0  # re-publish an unchanged row this often, so retention never drops a live one
FRESH_S = 900.0  # a row updated longer ago says nothing about the breaker now
EVICT_S = 24 * 3600.0  # a destination unused this long, and not failing, is forgotten


class DeliveryObserver(Protocol):
    """What the delivery engine reports; implementations do bookkeeping only, no I/O."""

    def attempted(self, dest_id: str, dest_type: str, workspace_id: str, ok: int, errors: list[str],
                  statuses: list[int | None] | None = None) -> None: ...

    def parked(self, dest_id: str, n: int) -> None: ...

    def dead_lettered(self, dest_id: str, workspace_id: str, n: int, error: str) -> None: ...

    def breaker(self, dest_id: str, state: str) -> None: ...


class NullObserver:
    def attempted(self, dest_id, dest_type, workspace_id, ok, errors, statuses=None) -> None:
        pass

    def parked(self, dest_id, n) -> None:
        pass

    def dead_lettered(self, dest_id, workspace_id, n, error) -> None:
        pass

    def breaker(self, dest_id, state) -> None:
        pass


_URL_SECRETS = re.compile(r"(https?://)[^/@\s]*@|\?[^\s\"']*")
_KV_SECRETS = re.compile(r"(?i)((?:api[_-]?key|token|secret|password|signature|authorization|credential)"
                         r"[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+")
_STATUS = re.compile(r"^(?:HTTP |s3 )?(\d{3})\b")


def redact(reason: str, limit: int = 300) -> str:
    """A failure reason safe to show any admin: no URL userinfo or query, no key=value secrets."""
    text = _URL_SECRETS.sub(lambda m: m.group(1) if m.group(1) else "?…", reason)
    return _KV_SECRETS.sub(r"\1***", text)[:limit]


def status_code(reason: str) -> int | None:
    """The provider's HTTP status in an error reason ("HTTP 401: ...", "s3 403: ..."), if any."""
    m = _STATUS.match(reason)
    return int(m.group(1)) if m else None


@dataclass
class DestinationStatus:
    """One worker's figures for one destination (a row of the status topic)."""

    destination_id: str
    worker: str
    type: str = ""
    workspace_id: str = ""  # the last workspace seen delivering here (partner-wide: one of many)
    last_success_ms: int | None = None
    last_failure_ms: int | None = None
    last_failure_status: int | None = None
    last_failure_reason: str | None = None
    failing_since_ms: int | None = None
    consecutive_failures: int = 0
    breaker: str = "closed"  # closed | open | half_open
    delivered: int = 0
    failed_attempts: int = 0  # every failed attempt, in line and from the retry topic
    parked: int = 0  # deliveries handed to the retry topic
    dead_lettered: int = 0
    updated_ms: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses itself, far cheaper than asdict()

    @classmethod
    def from_json(cls, data: bytes) -> "DestinationStatus":
        row = orjson.loads(data)
        return cls(**{k: v for k, v in row.items() if k in cls.__dataclass_fields__})

    def fail(self, reason: str, now: int, n: int = 1, status: int | None = None) -> None:
        self.last_failure_ms = now
        self.last_failure_reason = redact(reason)
        # The sink's own word for the provider's status when it has one (S3 names its error
        # code, not the status, in the text); else read from the text.
        self.last_failure_status = status if status is not None else status_code(reason)
        if self.failing_since_ms is None:
            self.failing_since_ms = now
        self.consecutive_failures += n


@dataclass
class StatusBook:
    """A worker's status of every destination it delivered to: the engine's observer."""

    worker: str
    min_interval_s: float = 2.0  # a changed state: a failure, a recovery, the breaker, a new destination
    counters_interval_s: float = 30.0  # only counters moved: what an admin reads is the same
    rows: dict[str, DestinationStatus] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _news: set[str] = field(default_factory=set)  # dirty rows whose state changed, not just counters
    _published: dict[str, float] = field(default_factory=dict)  # monotonic time of the last publish
    _touched: dict[str, float] = field(default_factory=dict)  # monotonic time of the last report

    def _row(self, dest_id: str, news: bool = False) -> DestinationStatus:
        row = self.rows.get(dest_id)
        if row is None:
            row = self.rows[dest_id] = DestinationStatus(dest_id, self.worker)
            news = True
        self._dirty.add(dest_id)
        if news:
            self._news.add(dest_id)
        self._touched[dest_id] = time.monotonic()
        return row

    # -- DeliveryObserver ------------------------------------------------------------------
    def attempted(self, dest_id: str, dest_type: str, workspace_id: str, ok: int, errors: list[str],
                  statuses: list[int | None] | None = None) -> None:
        before = self.rows.get(dest_id)
        recovered = ok and before is not None and before.failing_since_ms is not None
        row = self._row(dest_id, news=bool(errors) or bool(recovered))
        row.type, row.workspace_id = dest_type, workspace_id or row.workspace_id
        now = _now_ms()
        if ok:
            row.delivered += ok
            row.last_success_ms = now
            row.consecutive_failures, row.failing_since_ms = 0, None
        if errors:
            row.failed_attempts += len(errors)
            row.fail(errors[0], now, len(errors), statuses[0] if statuses else None)

    def parked(self, dest_id: str, n: int) -> None:
        if n:
            self._row(dest_id).parked += n

    def dead_lettered(self, dest_id: str, workspace_id: str, n: int, error: str) -> None:
        row = self._row(dest_id, news=True)
        row.dead_lettered += n
        row.workspace_id = workspace_id or row.workspace_id
        row.fail(error, _now_ms(), 0)

    def breaker(self, dest_id: str, state: str) -> None:
        row = self.rows.get(dest_id)
        if row is None or row.breaker != state:
            self._row(dest_id, news=True).breaker = state

    # -- publishing ------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[DestinationStatus]:
        """Rows to publish now: changed ones at most every `min_interval_s` per destination,
        unchanged ones every REFRESH_S; healthy rows idle for EVICT_S are dropped (their last
        publication stays on the topic until retention)."""
        now = time.monotonic() if now is None else now
        out = []
        for dest_id, row in list(self.rows.items()):
            last = self._published.get(dest_id)
            if dest_id in self._dirty:
                wait = self.min_interval_s if dest_id in self._news else self.counters_interval_s
                if last is not None and now - last < wait:
                    continue
            elif (row.failing_since_ms is None and row.breaker == "closed"
                  and now - self._touched.get(dest_id, now) >= EVICT_S):
                del self.rows[dest_id]
                self._published.pop(dest_id, None)
                self._touched.pop(dest_id, None)
                continue
            elif last is None or now - last < REFRESH_S:
                continue
            row.updated_ms = _now_ms()
            self._dirty.discard(dest_id)
            self._news.discard(dest_id)
            self._published[dest_id] = now
            out.append(row)
        return out


    def retry(self, rows: list[DestinationStatus]) -> None:
        """Rows whose publication failed: due again on the next call."""
        for row in rows:
            self._dirty.add(row.destination_id)
            self._news.add(row.destination_id)
            self._published.pop(row.destination_id, None)


def row_key(row: DestinationStatus) -> bytes:
    return f"{row.destination_id}/{row.worker}".encode()


# -- reading: merge the workers' rows -------------------------------------------------------

@dataclass
class MergedStatus:
    destination_id: str
    type: str
    state: str  # ok | failing | unknown
    workspace_id: str
    last_success_ms: int | None
    last_failure_ms: int | None
    last_failure_status: int | None
    last_failure_reason: str | None
    failing_since_ms: int | None
    consecutive_failures: int
    breaker: str
    delivered: int
    failed_attempts: int
    parked: int
    dead_lettered: int
    workers: int
    updated_ms: int

    def as_dict(self) -> dict:
        return asdict(self)


def merge(rows: list[DestinationStatus], now_ms: int | None = None) -> MergedStatus:
    """One destination's status from every worker's row: counters are summed, the latest
    success and failure win, and it is failing when its latest failure is newer than its
    latest success, or a worker that reported recently, and after that success, has its
    breaker open."""
    now_ms = _now_ms() if now_ms is None else now_ms
    latest = max(rows, key=lambda r: r.updated_ms)
    success = max((r.last_success_ms for r in rows if r.last_success_ms), default=None)
    failed = [r for r in rows if r.last_failure_ms]
    last_fail = max(failed, key=lambda r: r.last_failure_ms, default=None)
    # A breaker speaks for the destination only while its row is fresh and newer than the
    # latest success anywhere: a worker that stopped with its breaker open (its partition
    # moved on) must not keep a destination "failing" that another worker now delivers to.
    current = [r for r in rows if now_ms - r.updated_ms <= FRESH_S * 1000 and (success is None or r.updated_ms > success)]
    breaker = ("open" if any(r.breaker == "open" for r in current)
               else "half_open" if any(r.breaker == "half_open" for r in current) else "closed")
    failing_rows = [r for r in failed if success is None or r.last_failure_ms > success]
    if breaker == "open" or failing_rows:
        state = "failing"
    elif success is not None:
        state = "ok"
    else:
        state = "unknown"
    return MergedStatus(
        destination_id=latest.destination_id, type=latest.type, state=state,
        workspace_id=(last_fail if state == "failing" and last_fail else latest).workspace_id,
        last_success_ms=success,
        last_failure_ms=last_fail.last_failure_ms if last_fail else None,
        last_failure_status=last_fail.last_failure_status if last_fail else None,
        last_failure_reason=last_fail.last_failure_reason if last_fail else None,
        failing_since_ms=min((r.failing_since_ms or r.last_failure_ms for r in failing_rows), default=None)
        if state == "failing" else None,
        consecutive_failures=sum(r.consecutive_failures for r in failing_rows),
        breaker=breaker,
        delivered=sum(r.delivered for r in rows), failed_attempts=sum(r.failed_attempts for r in rows),
        parked=sum(r.parked for r in rows), dead_lettered=sum(r.dead_lettered for r in rows),
        workers=len(rows), updated_ms=latest.updated_ms)


@dataclass
class StatusTable:
    """The status topic as a reader holds it: every worker's latest row per destination, and
    the notifier's record of what it last announced (`notified/<destination id>` rows)."""

    rows: dict[str, dict[str, DestinationStatus]] = field(default_factory=dict)
    notified: dict[str, dict] = field(default_factory=dict)
    # `merged()` runs every second on the notifier, over every destination: only those whose
    # rows changed are merged again, and those with a breaker not closed, whose merge depends
    # on the clock (an open breaker speaks only while its row is fresh).
    _merged: dict[str, MergedStatus] = field(default_factory=dict, repr=False)
    _changed: set[str] = field(default_factory=set, repr=False)
    _clocked: set[str] = field(default_factory=set, repr=False)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if not key:
            return
        text = key.decode("utf-8", "replace")
        if text.startswith(NOTIFIED_PREFIX):
            dest_id = text[len(NOTIFIED_PREFIX):]
            if value is None:
                self.notified.pop(dest_id, None)
            else:
                self.notified[dest_id] = orjson.loads(value)
            return
        dest_id, _, worker = text.rpartition("/")
        if not dest_id:
            return
        if value is None:
            self.rows.get(dest_id, {}).pop(worker, None)
            self._changed.add(dest_id)
            return
        try:
            self.rows.setdefault(dest_id, {})[worker] = DestinationStatus.from_json(value)
        except (orjson.JSONDecodeError, TypeError):
            return
        self._changed.add(dest_id)

    def merged(self, now_ms: int | None = None) -> dict[str, MergedStatus]:
        now_ms = _now_ms() if now_ms is None else now_ms
        for dest_id in self._changed | self._clocked:
            workers = self.rows.get(dest_id)
            if not workers:
                self._merged.pop(dest_id, None)
                self._clocked.discard(dest_id)
                continue
            self._merged[dest_id] = merge(list(workers.values()), now_ms)
            if any(r.breaker != "closed" for r in workers.values()):
                self._clocked.add(dest_id)
            else:
                self._clocked.discard(dest_id)
        self._changed.clear()
        return dict(self._merged)


# -- notifications ---------------------------------------------------------------------------

NOTIFIED_PREFIX = "notified/"


@dataclass(frozen=True)
class Notice:
    destination_id: str
    state: str  # failing | recovered
    workspace_id: str
    reason: str
    since_ms: int
    status: int | None


def notices(table: StatusTable, now_ms: int, min_interval_s: float,
            merged: dict[str, MergedStatus] | None = None) -> list[Notice]:
    """The state changes to announce: a destination whose merged state is failing (its breaker
    opened, or a delivery was dead-lettered, after its last success) and that was last
    announced as not failing, or one announced failing that now succeeds. At most one per
    change, and none sooner than `min_interval_s` after the last one for that destination,
    so a destination flapping between states sends a bounded number of mails (the state is
    looked at again on the next round, so the last change is never lost)."""
    out = []
    for dest_id, m in (table.merged(now_ms) if merged is None else merged).items():
        before = table.notified.get(dest_id, {})
        announced = before.get("state", "recovered")
        if before and now_ms - before.get("at_ms", 0) < min_interval_s * 1000:
            continue
        if m.state == "failing" and announced != "failing":
            opened = m.breaker == "open" or m.dead_lettered > before.get("dead_lettered", 0)
            if not opened:
                continue
            out.append(Notice(dest_id, "failing", m.workspace_id, m.last_failure_reason or "circuit breaker open",
                              m.failing_since_ms or m.last_failure_ms or now_ms, m.last_failure_status))
        elif m.state == "ok" and announced == "failing":
            out.append(Notice(dest_id, "recovered", m.workspace_id, "deliveries succeed again",
                              m.last_success_ms or now_ms, None))
    return out


def notified_row(notice: Notice, m: MergedStatus | None, now_ms: int) -> tuple[bytes, bytes]:
    return ((NOTIFIED_PREFIX + notice.destination_id).encode(),
            orjson.dumps({"state": notice.state, "at_ms": now_ms,
                          "dead_lettered": m.dead_lettered if m else 0}))


def _now_ms() -> int:
    return int(time.time() * 1000)

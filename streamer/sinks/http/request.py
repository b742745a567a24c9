"""Request building shared by the REST providers: batching by limits, gzip, idempotency keys,
and classifying responses. Pure functions; the providers are small tables over them.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone
from typing import Callable, Iterable
from urllib.parse import urlsplit

from streamer.sinks.base import Delivery


@dataclass(slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    items: list[int]  # indices of the deliveries this request carries


@dataclass(slots=True)
class Rejected:
    """A delivery the provider can never accept (e.g. over its per-item limit)."""

    index: int
    reason: str


@dataclass(slots=True)
class Encoded:
    requests: list[HttpRequest] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def idempotency_key(deliveries: list[Delivery], items: list[int]) -> str:
    if len(items) == 1:
        return deliveries[items[0]].event_id
    h = hashlib.sha256()
    for i in items:
        h.update(deliveries[i].event_id.encode())
        h.update(b"\x00")
    return "batch-" + h.hexdigest()[:40]


def batch(sizes: Iterable[int], max_items: int | None, max_bytes: int | None, sep: int = 0) -> list[list[int]]:
    """Split item indices into runs that respect the limits; an item alone over max_bytes
    still gets a batch of its own (the caller decides whether that is allowed)."""
    out: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    for i, size in enumerate(sizes):
        extra = size + (sep if cur else 0)
        if cur and ((max_items and len(cur) >= max_items) or (max_bytes and cur_bytes + extra > max_bytes)):
            out.append(cur)
            cur, cur_bytes, extra = [], 0, size
        cur.append(i)
        cur_bytes += extra
    if cur:
        out.append(cur)
    return out


def finish(url: str, body: bytes, headers: dict[str, str], use_gzip: bool, items: list[int],
           deliveries: list[Delivery]) -> HttpRequest:
    headers = {**headers, "Idempotency-Key": idempotency_key(deliveries, items)}
    if use_gzip:
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return HttpRequest(url, body, headers, items)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class Policy:
    """Which statuses mean success, retry, or never retry."""

    success: Callable[[int, bytes], bool]
    retry: Callable[[int], bool]


def default_retry(status: int) -> bool:
    return status in (408, 429) or status >= 500


@dataclass(frozen=True, slots=True)
class Probe:
    """A provider's read-only check of a destination (`settings test --check probe`): a GET
    of its validate or health endpoint, with the destination's own auth headers."""

    url: str
    headers: dict[str, str]
    success: Callable[[int, bytes], bool]
    meaning: dict[int, str]  # what a failing status means, for the admin reading the reason


def probe_headers(headers: dict[str, str]) -> dict[str, str]:
    """The destination's headers for a GET: its auth, without the POST's body headers."""
    return {k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-encoding")}


def base_url(url: str, path_from: str) -> tuple[str, str, str]:
    """(scheme, netloc, path before `path_from`) of an endpoint URL; query and fragment dropped:
    they belong to the endpoint that takes events, not to its sibling."""
    parts = urlsplit(url)
    path = parts.path
    at = path.find(path_from)
    return parts.scheme, parts.netloc, (path[:at] if at >= 0 else path).rstrip("/")

"""Datadog logs intake v2: a JSON array of log items, at most 1000 items and 5 MB
uncompressed per request and 1 MB per item; 202 is success.

The rendered message travels as the item's `message` string, exactly as rendered; an item
over 1 MB is dead-lettered with the reason rather than silently truncated by the intake.
"""

from __future__ import annotations

import orjson

from urllib.parse import urlunsplit

from streamer.sinks.http.request import Encoded, Policy, Probe, Rejected, base_url, batch, finish, probe_headers

MAX_ITEMS, MAX_BYTES, MAX_ITEM_BYTES = 1000, 5_000_000, 1_000_000
POLICY = Policy(success=lambda status, body: status == 202,
                retry=lambda status: status in (408, 429) or (status >= 500 and status not in (501,)))

LOGS_PATH = "/api/v2/logs"
VALIDATE_PATH = "/api/v1/validate"
INTAKE_HOST = "http-intake.logs."  # Datadog's sites: http-intake.logs.<site> takes logs, api.<site> the API
PROBE_CHECK = "datadog validate"


def validate_url(url: str) -> str:
    """Where the destination's API key is validated. On Datadog's own sites that is the API
    host of the intake's site (`http-intake.logs.datadoghq.eu` -> `api.datadoghq.eu`), as
    Vector derives it from `site`; any other URL (a relay, a proxy) is asked at its own base,
    as Vector does with a custom endpoint."""
    scheme, netloc, path = base_url(url, LOGS_PATH)
    if netloc.lower().startswith(INTAKE_HOST):
        netloc, path = "api." + netloc[len(INTAKE_HOST):], ""
    return urlunsplit((scheme, netloc, path + VALIDATE_PATH, "", ""))


def _valid(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return orjson.loads(body).get("valid") is True
    except (orjson.JSONDecodeError, AttributeError):
        return False


def probe(dest: dict, headers: dict[str, str]) -> Probe:
    """`GET /api/v1/validate` with DD-API-KEY: 200 `{"valid": true}` for a key Datadog knows,
    403 for one it does not. It checks the key only, not that the intake takes logs."""
    return Probe(validate_url(dest["url"]), probe_headers(headers), _valid,
                 {403: "the API key is not valid", 200: "the API key is not valid"})


def _item_prefix(dest: dict) -> bytes:
    """`{"ddsource":...,"service":...[,"ddtags":...][,"hostname":...],"message":` for this destination."""
    fields = {"ddsource": dest.get("ddsource") or "workato", "service": dest.get("service") or "audit-log"}
    if dest.get("ddtags"):
        fields["ddtags"] = dest["ddtags"]
    if dest.get("hostname"):
        fields["hostname"] = dest["hostname"]
    return orjson.dumps(fields)[:-1] + b',"message":'


def encode(dest: dict, headers: dict[str, str], deliveries) -> Encoded:
    base = {"Content-Type": "application/json", **headers}
    prefix = _item_prefix(dest)  # the same for every item: built once per request batch
    out = Encoded()
    items: list[bytes] = []
    index: list[int] = []
    for i, d in enumerate(deliveries):
        encoded = b"".join((prefix, orjson.dumps(d.message.decode("utf-8")), b"}"))
        if len(encoded) > MAX_ITEM_BYTES:
            out.rejected.append(Rejected(i, f"message is {len(encoded)} bytes as a Datadog log item, "
                                            f"over the intake's {MAX_ITEM_BYTES} byte limit per item"))
            continue
        items.append(encoded)
        index.append(i)
    if len(items) == 1:
        out.requests.append(finish(dest["url"], b"[" + items[0] + b"]", base, dest.get("gzip", False), index,
                                   deliveries))
        return out
    for run in batch([len(b) for b in items], MAX_ITEMS, MAX_BYTES - 2, sep=1):
        body = b"[" + b",".join([items[j] for j in run]) + b"]"
        out.requests.append(finish(dest["url"], body, base, dest.get("gzip", False), [index[j] for j in run],
                                   deliveries))
    return out

"""Azure Monitor Logs Ingestion API: the request URL, the record each event becomes, batches
within the API's limits, the Entra token request, and what a status means. Pure.

A call is `POST {endpoint}/dataCollectionRules/{rule_id}/streams/{stream}?api-version=...`
with a JSON array of records and an Entra bearer token; at most 1 MB of data per call.

Each event becomes one record with fixed columns, because the events' own shapes differ by
kind and a custom table has one schema: `TimeGenerated` (when the raw event was produced),
`WorkspaceId`, `EventId`, `Kind`, and `Message` (the rendered message, as JSON when it is
JSON, else as a string), so the rule's stream declaration is the same for every tenant.
"""

from __future__ import annotations

import gzip
from datetime import datetime, timezone
from urllib.parse import quote

import orjson

from streamer.sinks.base import DELIVERED, Delivery, Outcome
from streamer.sinks.http.request import Encoded, HttpRequest, Rejected, batch, idempotency_key
from streamer.sinks.oauth.request import renew_at, token_request

API_VERSION = "2023-01-01"
MAX_BYTES = 1_000_000  # per call, uncompressed: the API counts the data, not its encoding
SCOPE = "https://monitor.azure.com//.default"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
NEVER_RETRY = frozenset({400, 401, 403, 404, 413})


def ingestion_url(dest: dict) -> str:
    return (f"{dest['endpoint'].rstrip('/')}/dataCollectionRules/{quote(dest['rule_id'], safe='')}"
            f"/streams/{quote(dest['stream'], safe='')}?api-version={API_VERSION}")


def token_url(dest: dict) -> str:
    authority = (dest.get("authority") or DEFAULT_AUTHORITY).rstrip("/")
    return f"{authority}/{quote(dest['tenant_id'], safe='')}/oauth2/v2.0/token"


def token_form(client_id: str, client_secret: str) -> bytes:
    """The client-credentials grant, form-encoded (Entra takes the credentials in the form)."""
    return token_request(client_id, client_secret, SCOPE, client_auth="body")[0]


def token_expiry(body: dict, now: float) -> float:
    """When to renew a token (monotonic seconds), as for every OAuth2 token (oauth/request.py)."""
    return renew_at(float(body.get("expires_in") or 0), now)


def record(d: Delivery) -> bytes:
    """One event as a record of the fixed columns (see the module docstring)."""
    when = datetime.fromtimestamp((d.produced_ms or 0) / 1000, timezone.utc) if d.produced_ms else \
        datetime.now(timezone.utc)
    message = orjson.Fragment(d.message) if _is_json(d.message) else d.message.decode("utf-8", "replace")
    return orjson.dumps({"TimeGenerated": when.isoformat().replace("+00:00", "Z"), "WorkspaceId": d.workspace_id,
                         "EventId": d.event_id, "Kind": d.kind, "Message": message})


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
        return True
    except orjson.JSONDecodeError:
        return False


def encode(dest: dict, deliveries: list[Delivery]) -> Encoded:
    """Requests (without the token header) of at most MAX_BYTES each; a record alone over it
    can never be accepted and is rejected with the reason."""
    url = ingestion_url(dest)
    out = Encoded()
    records: list[bytes] = []
    index: list[int] = []
    for i, d in enumerate(deliveries):
        r = record(d)
        if len(r) + 2 > MAX_BYTES:
            out.rejected.append(Rejected(i, f"message is {len(r)} bytes as an Azure Monitor record, over the "
                                            f"Logs Ingestion API's {MAX_BYTES} byte limit per call"))
            continue
        records.append(r)
        index.append(i)
    for run in batch([len(r) for r in records], None, MAX_BYTES - 2, sep=1):
        body = b"[" + b",".join(records[j] for j in run) + b"]"
        items = [index[j] for j in run]
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(deliveries, items)}
        if dest.get("gzip"):
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        out.requests.append(HttpRequest(url, body, headers, items))
    return out


def classify(status: int, body: bytes, retry_after: float | None = None) -> Outcome:
    """204 is success; 429 and 5xx retry (honouring Retry-After); 400, 401, 403, 404 and 413
    never do, nor does any other 4xx: the request or the configuration is wrong."""
    if 200 <= status < 300:
        return DELIVERED
    retryable = status not in NEVER_RETRY and (status >= 500 or status in (408, 429))
    return Outcome(False, retryable, f"azure_monitor HTTP {status}: {body[:200].decode('utf-8', 'replace')}"[:300],
                   retry_after if retryable else None, status)

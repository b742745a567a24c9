"""Splunk HTTP Event Collector: event envelopes written back to back (no array, no commas),
at most 1 MB per request; success is 200 with {"text":"Success","code":0}.

Indexer acknowledgement (optional, Splunk Enterprise): HEC's 200 only says the events were
received. With `indexer_acknowledgements` on, each request carries a channel
(`X-Splunk-Request-Channel`, one per destination and worker), the answer carries an `ackId`,
and the sink asks `POST /services/collector/ack?channel=…` with `{"acks": [id]}` until
Splunk says `{"acks": {"id": true}}`: only then is the delivery done. Not acknowledged
within `ACK_WAIT_S`: a retryable failure, so the events are sent again (Splunk may then hold
them twice, which at-least-once allows; losing them is what acks exist to prevent)."""

from __future__ import annotations

import orjson

from urllib.parse import urlencode, urlunsplit

from streamer.sinks.http.request import Encoded, Policy, Probe, base_url, batch, finish, probe_headers

MAX_BYTES = 1_000_000
COLLECTOR_PATH = "/services/collector"
HEALTH_PATH = "/services/collector/health"
ACK_PATH = "/services/collector/ack"
CHANNEL_HEADER = "X-Splunk-Request-Channel"
# Well inside the engine's delivery deadline (5 s by default), which also bounds the POST.
ACK_WAIT_S = 3.0
PROBE_CHECK = "splunk health"


def _success(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return orjson.loads(body).get("code") == 0
    except (orjson.JSONDecodeError, AttributeError):
        return False


# 503 is HEC's "server busy" (code 9); 400/401/403 (codes 1-7, 10-14) are configuration errors.
POLICY = Policy(success=_success, retry=lambda status: status in (408, 429) or status >= 500)


def envelope(dest: dict, produced_ms: int, message: bytes) -> bytes:
    head = {"time": round(produced_ms / 1000, 3) if produced_ms else None, "sourcetype": dest.get("sourcetype") or "_json"}
    for field in ("host", "source", "index"):
        if dest.get(field):
            head[field] = dest[field]
    if head["time"] is None:
        del head["time"]
    # `event` is the rendered message as a JSON value, spliced in as bytes.
    return orjson.dumps(head)[:-1] + b',"event":' + message + b"}"


def encode(dest: dict, headers: dict[str, str], deliveries) -> Encoded:
    base = {"Content-Type": "application/json", **headers}
    envelopes = [envelope(dest, d.produced_ms, d.message) for d in deliveries]
    out = Encoded()
    for items in batch((len(e) for e in envelopes), None, MAX_BYTES):
        body = b"".join(envelopes[i] for i in items)
        out.requests.append(finish(dest["url"], body, base, dest.get("gzip", False), items, deliveries))
    return out


def health_url(url: str) -> str:
    """HEC's health endpoint on the collector the destination posts to."""
    scheme, netloc, path = base_url(url, COLLECTOR_PATH)
    return urlunsplit((scheme, netloc, path + HEALTH_PATH, "", ""))


def probe(dest: dict, headers: dict[str, str]) -> Probe:
    """`GET /services/collector/health`: 200 when HEC is up and has queue space, 503 when it
    is unhealthy (queues full), 400 for a token it refuses. Splunk answers from HEC's state;
    the token is sent (as Vector's healthcheck sends it) but Splunk does not promise to judge
    it there, so a healthy answer does not prove the token: a write test does."""
    return Probe(health_url(dest["url"]), probe_headers(headers), lambda status, body: status == 200,
                 {400: "invalid HEC token", 503: "HEC is unhealthy: its queues are full"})


# -- indexer acknowledgement (pure) ---------------------------------------------------------

def ack_url(url: str, channel: str) -> str:
    scheme, netloc, path = base_url(url, COLLECTOR_PATH)
    return urlunsplit((scheme, netloc, path + ACK_PATH, urlencode({"channel": channel}), ""))


def ack_id(body: bytes) -> int | None:
    """The ackId of a successful event request; None when the token has acknowledgement off."""
    try:
        value = orjson.loads(body).get("ackId")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if type(value) is int else None


def ack_query(ack: int) -> bytes:
    return orjson.dumps({"acks": [ack]})


def acknowledged(body: bytes, ack: int) -> bool:
    try:
        return orjson.loads(body).get("acks", {}).get(str(ack)) is True
    except (orjson.JSONDecodeError, AttributeError):
        return False

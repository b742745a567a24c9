"""Datadog logs intake v2: a JSON array of log items, at most 1000 items and 5 MB
uncompressed per request and 1 MB per item; 202 is success.

The rendered message travels as the item's `message` string, exactly as rendered; an item
over 1 MB is dead-lettered with the reason rather than silently truncated by the intake.
"""

from __future__ import annotations

import orjson

from streamer.sinks.http.request import Encoded, Policy, Rejected, batch, finish

MAX_ITEMS, MAX_BYTES, MAX_ITEM_BYTES = 1000, 5_000_000, 1_000_000
POLICY = Policy(success=lambda status, body: status == 202,
                retry=lambda status: status in (408, 429) or (status >= 500 and status not in (501,)))


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

"""Sumo Logic HTTP source: newline-delimited messages, at most 1 MB uncompressed per request.

Sumo drops throttled (429) data, so 429 must be re-sent; 401 never will succeed.
"""

from __future__ import annotations

from streamer.sinks.http.request import Encoded, Policy, batch, default_retry, finish

MAX_BYTES = 1_000_000
POLICY = Policy(success=lambda status, body: status == 200, retry=default_retry)
_META = {"sumo_category": "X-Sumo-Category", "sumo_name": "X-Sumo-Name", "sumo_host": "X-Sumo-Host",
         "sumo_fields": "X-Sumo-Fields"}


def encode(dest: dict, headers: dict[str, str], deliveries) -> Encoded:
    base = {"Content-Type": "text/plain", **headers}
    for field, header in _META.items():
        if dest.get(field):
            base[header] = dest[field]
    out = Encoded()
    for items in batch((len(d.message) for d in deliveries), None, MAX_BYTES, sep=1):
        body = b"\n".join(deliveries[i].message for i in items)
        out.requests.append(finish(dest["url"], body, base, dest.get("gzip", False), items, deliveries))
    return out

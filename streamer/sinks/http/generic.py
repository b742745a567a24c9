"""Any HTTP endpoint: one JSON message per POST; 2xx is success; 408, 429, 5xx retried."""

from __future__ import annotations

from streamer.sinks.http.request import Encoded, Policy, default_retry, finish

POLICY = Policy(success=lambda status, body: 200 <= status < 300, retry=default_retry)


def encode(dest: dict, headers: dict[str, str], deliveries) -> Encoded:
    base = {"Content-Type": "application/json", **headers}
    return Encoded([finish(dest["url"], d.message, base, dest.get("gzip", False), [i], deliveries)
                    for i, d in enumerate(deliveries)])

"""REST sink I/O: a connection pool per destination, SSRF-safe resolution, one attempt per call.

Retries are not done here: the engine decides (in-line backoff, the retry topic, or a dead
letter), so every attempt is counted and the partition never blocks on one destination.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from streamer.settings.secrets import decrypt
from streamer.settings.urls import address_allowed
from streamer.sinks.base import DELIVERED, Delivery, Outcome
from streamer.sinks.http import datadog, generic, splunk, sumo
from streamer.sinks.http.request import retry_after_seconds

PROVIDERS = {"generic": generic, "sumo": sumo, "datadog": datadog, "splunk": splunk}
DEFAULT_PATHS = {"datadog": "/api/v2/logs", "splunk": "/services/collector/event"}


class PublicOnlyResolver(AbstractResolver):
    """Refuses private, loopback and link-local answers at connect time (DNS rebinding)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if address_allowed(a["host"])]
        if not allowed:
            raise OSError(f"destination host {host!r} resolves only to private addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def endpoint(dest: dict[str, Any]) -> str:
    url = dest["url"]
    path = DEFAULT_PATHS.get(dest.get("provider", "generic"))
    # Datadog and Splunk are configured by site / base URL, as their docs name them.
    if path and not urlsplit(url).path.rstrip("/").endswith(path):
        return url.rstrip("/") + path
    return url


def auth_headers(dest: dict[str, Any], keys: dict[str, bytes]) -> dict[str, str]:
    headers = dict(dest.get("headers") or {})
    for name, env in (dest.get("secret_headers") or {}).items():
        headers[name] = decrypt(env["enc"], keys)
    if dest.get("provider") == "datadog" and dest.get("api_key"):
        headers["DD-API-KEY"] = decrypt(dest["api_key"]["enc"], keys)
    if dest.get("provider") == "splunk" and dest.get("token"):
        headers["Authorization"] = "Splunk " + decrypt(dest["token"]["enc"], keys)
    return headers


class HttpSink:
    def __init__(self, encryption_keys: dict[str, bytes], allow_private: bool, concurrency: int, timeout_s: float):
        self._keys = encryption_keys
        self._allow_private = allow_private
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 5))
        self._pools: dict[str, tuple[aiohttp.ClientSession, dict[str, str]]] = {}

    def _pool(self, dest: dict[str, Any]) -> tuple[aiohttp.ClientSession, dict[str, str]]:
        fp = hashlib.sha256(repr(sorted(dest.items())).encode()).hexdigest()
        if fp not in self._pools:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=60,
                                             resolver=None if self._allow_private else PublicOnlyResolver())
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                            headers={"User-Agent": "streamer/0.1"})
            self._pools[fp] = (session, auth_headers(dest, self._keys))
        return self._pools[fp]

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        provider = PROVIDERS[destination.get("provider", "generic")]
        session, headers = self._pool(destination)
        dest = {**destination, "url": endpoint(destination)}
        encoded = provider.encode(dest, headers, deliveries)
        outcomes: list[Outcome] = [DELIVERED] * len(deliveries)
        for r in encoded.rejected:
            outcomes[r.index] = Outcome(False, False, r.reason)

        async def post(req) -> None:
            outcome = await self._post(session, provider.POLICY, req)
            for i in req.items:
                outcomes[i] = outcome

        await asyncio.gather(*(post(r) for r in encoded.requests))
        return outcomes

    async def _post(self, session: aiohttp.ClientSession, policy, req) -> Outcome:
        try:
            async with session.post(req.url, data=req.body, headers=req.headers, allow_redirects=False) as resp:
                body = await resp.read()
                if policy.success(resp.status, body):
                    return DELIVERED
                error = f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}"
                return Outcome(False, policy.retry(resp.status), error,
                               retry_after_seconds(resp.headers.get("Retry-After")))
        except asyncio.TimeoutError:
            return Outcome(False, True, "timed out")
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(False, True, f"network error: {type(e).__name__}: {e}"[:300])

    async def close(self) -> None:
        for session, _ in self._pools.values():
            await session.close()
        self._pools.clear()

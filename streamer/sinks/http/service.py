"""REST sink I/O: one shared connection pool, SSRF-safe resolution, one attempt per call.

Retries are not done here: the engine decides (in-line backoff, the retry topic, or a dead
letter), so every attempt is counted and the partition never blocks on one destination.

Every error text leaves this module with the destination's own decrypted secrets replaced
by `***`: a provider may echo a key in its answer (Datadog: `API key <key> is not valid`),
and error texts go to logs, retry and dead-letter headers and `streamer dlq`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from streamer.settings.secrets import decrypt, redact_text, scope_of_destination
from streamer.settings.urls import address_allowed, literal_problem
from streamer.sinks.base import DELIVERED, Delivery, Outcome
from streamer.sinks.http import datadog, generic, splunk, sumo
from streamer.sinks.http.request import retry_after_seconds

log = logging.getLogger(__name__)
OFF_LOOP_BYTES = 256 * 1024  # a batch this large is encoded (escaped, gzipped) in a thread
PROVIDERS = {"generic": generic, "sumo": sumo, "datadog": datadog, "splunk": splunk}
DEFAULT_PATHS = {"datadog": "/api/v2/logs", "splunk": "/services/collector/event"}


class PublicOnlyResolver(AbstractResolver):
    """Refuses answers that are not globally routable at connect time (DNS rebinding).
    aiohttp does not ask a resolver about IP literals: `literal_problem` covers those."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if address_allowed(a["host"])]
        if not allowed:
            raise OSError(f"destination host {host!r} resolves only to addresses that are not globally routable")
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


def auth_headers(dest: dict[str, Any], keys: dict[str, bytes], scope: str) -> tuple[dict[str, str], list[str]]:
    """(request headers, the decrypted secrets): secrets are bound to their scope and field."""
    headers = dict(dest.get("headers") or {})
    secrets: list[str] = []
    for name, env in (dest.get("secret_headers") or {}).items():
        headers[name] = decrypt(env["enc"], keys, scope, f"destination.secret_headers.{name}")
        secrets.append(headers[name])
    if dest.get("provider") == "datadog" and dest.get("api_key"):
        headers["DD-API-KEY"] = decrypt(dest["api_key"]["enc"], keys, scope, "destination.api_key")
        secrets.append(headers["DD-API-KEY"])
    if dest.get("provider") == "splunk" and dest.get("token"):
        token = decrypt(dest["token"]["enc"], keys, scope, "destination.token")
        headers["Authorization"] = "Splunk " + token
        secrets.append(token)
    # A secret header like "Bearer <token>" may be echoed as the token alone.
    secrets += [part for s in list(secrets) for part in s.split() if len(part) >= 8 and part != s]
    return headers, secrets


class HttpSink:
    """One connection pool for every destination, and per destination its auth headers
    (decrypted once), URL and a cap on concurrent requests.

    Destinations on one host (every tenant of one Datadog site, say) share keep-alive
    connections instead of each opening its own: with thousands of destinations a
    per-destination pool mostly re-connects. Requests stay per destination (one tenant's
    headers, never batched with another's); the pool keeps no cookies, so nothing one
    destination's server sets reaches another's requests; and the per-destination cap
    bounds what one slow destination can hold, as its own pool's limit did.
    """

    MAX_DESTINATIONS = 20_000  # cached destinations; the least recently used are forgotten

    def __init__(self, encryption_keys: dict[str, bytes], allow_private: bool, concurrency: int, timeout_s: float):
        self._keys = encryption_keys
        self._allow_private = allow_private
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 5))
        self._session: aiohttp.ClientSession | None = None
        self._destinations: OrderedDict[bytes, _Destination] = OrderedDict()

    def _shared_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60,
                                             resolver=None if self._allow_private else PublicOnlyResolver())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  cookie_jar=aiohttp.DummyCookieJar(),
                                                  headers={"User-Agent": "streamer/0.1"})
        return self._session

    def _destination(self, dest: dict[str, Any], scope: str) -> "_Destination":
        fp = hashlib.sha256(scope.encode() + orjson.dumps(dest, option=orjson.OPT_SORT_KEYS)).digest()
        found = self._destinations.get(fp)
        if found is not None:
            self._destinations.move_to_end(fp)
            return found
        url = endpoint(dest)
        headers, secrets = auth_headers(dest, self._keys, scope)
        found = _Destination({**dest, "url": url}, headers, asyncio.Semaphore(self._concurrency), secrets,
                             None if self._allow_private else literal_problem(url))
        self._destinations[fp] = found
        if len(self._destinations) > self.MAX_DESTINATIONS:
            self._destinations.popitem(last=False)
        return found

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        secrets: list[str] = []
        try:
            target = self._destination(destination, scope_of_destination(deliveries[0].destination_id))
            secrets = target.secrets
            outcomes = await self._send(target, deliveries)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or a broken destination: retryable, and no secret in the text
            error = redact_text(f"internal error: {type(e).__name__}: {e}", secrets)[:300]
            log.error("http sink error: %s", error)
            return [Outcome(False, True, error)] * len(deliveries)
        return [o if o.ok or not o.error else replace(o, error=redact_text(o.error, secrets)[:300])
                for o in outcomes]

    async def _send(self, target: "_Destination", deliveries: list[Delivery]) -> list[Outcome]:
        if target.refused:  # an IP literal the guard refuses now: retrying will not change it
            return [Outcome(False, False, f"destination refused: {target.refused}")] * len(deliveries)
        provider = PROVIDERS[target.dest.get("provider", "generic")]
        session = self._shared_session()
        if sum(len(d.message) for d in deliveries) > OFF_LOOP_BYTES:
            # Escaping and gzip of megabytes take milliseconds to seconds of CPU: in a thread,
            # so the loop keeps heartbeats and every other destination moving meanwhile.
            encoded = await asyncio.to_thread(provider.encode, target.dest, target.headers, deliveries)
        else:
            encoded = provider.encode(target.dest, target.headers, deliveries)
        outcomes: list[Outcome] = [DELIVERED] * len(deliveries)
        for r in encoded.rejected:
            outcomes[r.index] = Outcome(False, False, r.reason)

        async def post(req) -> None:
            async with target.limit:
                outcome = await self._post(session, provider.POLICY, req)
            for i in req.items:
                outcomes[i] = deliveries[i].outcome = outcome

        if len(encoded.requests) == 1:  # the common case: no task for a single request
            await post(encoded.requests[0])
        else:
            await asyncio.gather(*(post(r) for r in encoded.requests))
        return outcomes

    async def _post(self, session: aiohttp.ClientSession, policy, req) -> Outcome:
        try:
            async with session.post(req.url, data=req.body, headers=req.headers, allow_redirects=False) as resp:
                body = await resp.read()
                if policy.success(resp.status, body):
                    return DELIVERED
                # Not cut to 200 characters here: send() redacts first, so no secret is cut in half.
                error = f"HTTP {resp.status}: {body[:4096].decode('utf-8', 'replace')}"
                return Outcome(False, policy.retry(resp.status), error,
                               retry_after_seconds(resp.headers.get("Retry-After")), resp.status)
        except asyncio.TimeoutError:
            return Outcome(False, True, "timed out")
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(False, True, f"network error: {type(e).__name__}: {e}")

    async def probe(self, destination: dict[str, Any], destination_id: str) -> Outcome:
        """The provider's validate or health endpoint (`settings test --check probe`; Sumo
        Logic and generic HTTP have none: their test writes). Held to the SSRF guard as a POST is:
        the probe URL is derived from the configured one (Datadog's API host from its intake
        host), so its literal address is checked here and the pool's resolver refuses
        private answers at connect time."""
        provider = PROVIDERS[destination.get("provider", "generic")]
        if not hasattr(provider, "probe"):
            return Outcome(False, False, f"{destination.get('provider', 'generic')} has no probe endpoint")
        secrets: list[str] = []
        try:
            target = self._destination(destination, scope_of_destination(destination_id))
            secrets = target.secrets
            probe = provider.probe(target.dest, target.headers)
            refused = target.refused or (None if self._allow_private else literal_problem(probe.url))
            if refused:
                outcome = Outcome(False, False, f"destination refused: {refused}")
            else:
                async with target.limit:
                    outcome = await self._get(self._shared_session(), probe)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            outcome = Outcome(False, True, f"internal error: {type(e).__name__}: {e}")
        if outcome.error:
            outcome = replace(outcome, error=redact_text(outcome.error, secrets)[:300])
        return outcome

    async def _get(self, session: aiohttp.ClientSession, probe) -> Outcome:
        try:
            async with session.get(probe.url, headers=probe.headers, allow_redirects=False) as resp:
                body = await resp.read()
                if probe.success(resp.status, body):
                    return Outcome(True, status=resp.status)
                meaning = probe.meaning.get(resp.status)
                error = f"HTTP {resp.status}{f' ({meaning})' if meaning else ''}: {body[:4096].decode('utf-8', 'replace')}"
                return Outcome(False, resp.status >= 500 or resp.status in (408, 429), error, status=resp.status)
        except asyncio.TimeoutError:
            return Outcome(False, True, "timed out")
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(False, True, f"network error: {type(e).__name__}: {e}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._destinations.clear()


@dataclass(slots=True)
class _Destination:
    dest: dict[str, Any]  # as configured, with the provider's full endpoint URL
    headers: dict[str, str]  # plain and decrypted secret headers
    limit: asyncio.Semaphore  # concurrent requests to this destination
    secrets: list[str]  # the decrypted secrets, redacted from every error text
    refused: str | None = None  # why the SSRF guard refuses this URL

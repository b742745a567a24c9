"""Azure Monitor Logs sink I/O: an Entra client-credentials token per app registration,
cached and renewed before it expires, and one POST per batch of at most 1 MB.

The shared aiohttp session uses the resolver that refuses private answers (unless private
destinations are allowed), for the ingestion endpoint and the token authority alike.
Retries are the engine's: it gets each request's outcome, with Retry-After.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from streamer.settings.secrets import decrypt, redact_text, scope_of_destination
from streamer.sinks.azure_monitor.request import classify, encode, token_form, token_url
from streamer.sinks.base import DELIVERED, Delivery, Outcome
from streamer.sinks.http.request import retry_after_seconds
from streamer.sinks.http.service import PublicOnlyResolver
from streamer.sinks.oauth.service import TokenCache, TokenError, TokenRequest

OFF_LOOP_BYTES = 256 * 1024  # a batch this large is encoded in a thread


class AzureMonitorSink:
    MAX_DESTINATIONS = 2_000
    MAX_TOKENS = 2_000

    def __init__(self, encryption_keys: dict[str, bytes], allow_private: bool, concurrency: int,
                 timeout_s: float) -> None:
        self._keys = encryption_keys
        self._allow_private = allow_private
        self._concurrency = max(1, concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 5))
        self._session: aiohttp.ClientSession | None = None
        self._limits: OrderedDict[bytes, asyncio.Semaphore] = OrderedDict()
        self._tokens = TokenCache(self.MAX_TOKENS)  # per authority, tenant, client and secret

    def _shared_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60,
                                             resolver=None if self._allow_private else PublicOnlyResolver())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  cookie_jar=aiohttp.DummyCookieJar(),
                                                  headers={"User-Agent": "streamer/0.1"})
        return self._session

    def _limit(self, dest: dict[str, Any]) -> asyncio.Semaphore:
        fp = hashlib.sha256(orjson.dumps(dest, option=orjson.OPT_SORT_KEYS)).digest()
        found = self._limits.get(fp)
        if found is None:
            found = self._limits[fp] = asyncio.Semaphore(self._concurrency)
            if len(self._limits) > self.MAX_DESTINATIONS:
                self._limits.popitem(last=False)
        self._limits.move_to_end(fp)
        return found

    async def _token(self, session: aiohttp.ClientSession, dest: dict[str, Any], scope: str) -> str:
        """A valid access token (see streamer/sinks/oauth/service.py). A refusal by Entra is
        the configuration's fault (a wrong secret or tenant): never retried; its 5xx and
        network errors are."""
        url = token_url(dest)
        key = hashlib.sha256(orjson.dumps([scope, url, dest["client_id"], dest["client_secret"]])).digest()

        def request() -> TokenRequest:
            secret = decrypt(dest["client_secret"]["enc"], self._keys, scope, "destination.client_secret")
            return TokenRequest(url, token_form(dest["client_id"], secret),
                                {"Content-Type": "application/x-www-form-urlencoded"}, "azure_monitor token")

        return await self._tokens.get(session, key, request)

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        session = self._shared_session()
        scope = scope_of_destination(deliveries[0].destination_id)
        if sum(len(d.message) for d in deliveries) > OFF_LOOP_BYTES:
            encoded = await asyncio.to_thread(encode, destination, deliveries)
        else:
            encoded = encode(destination, deliveries)
        outcomes: list[Outcome] = [DELIVERED] * len(deliveries)
        for r in encoded.rejected:
            outcomes[r.index] = deliveries[r.index].outcome = Outcome(False, False, r.reason)
        limit = self._limit(destination)

        async def post(req) -> None:
            async with limit:
                outcome = await self._post(session, destination, req, scope)
            for i in req.items:
                outcomes[i] = deliveries[i].outcome = outcome  # known at once, for the deadline

        if len(encoded.requests) == 1:
            await post(encoded.requests[0])
        elif encoded.requests:
            await asyncio.gather(*(post(r) for r in encoded.requests))
        if any(o.error for o in outcomes):
            # Error texts go to logs, retry and dead-letter headers: an echoed client secret
            # must not (the REST sink does the same for its secrets).
            secret = decrypt(destination["client_secret"]["enc"], self._keys, scope, "destination.client_secret")
            for i, o in enumerate(outcomes):
                if o.error:
                    outcomes[i] = deliveries[i].outcome = replace(o, error=redact_text(o.error, [secret])[:300])
        return outcomes

    async def _post(self, session: aiohttp.ClientSession, dest: dict[str, Any], req, scope: str) -> Outcome:
        try:
            token = await self._token(session, dest, scope)
            headers = {**req.headers, "Authorization": f"Bearer {token}"}
            async with session.post(req.url, data=req.body, headers=headers, allow_redirects=False) as resp:
                return classify(resp.status, await resp.read(), retry_after_seconds(resp.headers.get("Retry-After")))
        except TokenError as e:
            return e.outcome
        except asyncio.TimeoutError:
            return Outcome(False, True, "azure_monitor timed out")
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(False, True, f"azure_monitor network error: {type(e).__name__}: {e}"[:300])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._limits.clear()
        self._tokens.clear()

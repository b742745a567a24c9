"""REST sink I/O: shared connection pools, SSRF-safe resolution, one attempt per call
(two for an OAuth2 destination that refuses its token: a new token, and the request again).

Direct requests go on the lean transport (streamer/sinks/transport.py), which costs the
client about half of aiohttp's CPU per request; through a proxy, OAuth token requests and
probes go through aiohttp's session. Both pools resolve through `PublicOnlyResolver`.

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
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit
from urllib.request import proxy_bypass

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from aiohttp.helpers import proxies_from_env
from aiohttp.resolver import DefaultResolver
from yarl import URL

from streamer.settings.secrets import redact_text, scope_of_destination
from streamer.settings.urls import address_allowed, literal_problem
from streamer.sinks.base import DELIVERED, Delivery, Outcome
from streamer.sinks.transport import Pool, usable
from streamer.sinks.http import datadog, generic, splunk, sumo, tls
from streamer.sinks.http.auth import OAuth2, credentials
from streamer.sinks.http.request import retry_after_seconds
from streamer.sinks.oauth.service import TokenCache, TokenError, TokenRequest

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


class HttpSink:
    """Connection pools shared by every destination, and per destination its auth headers
    (decrypted once), URL, TLS context, proxy and a cap on concurrent requests.

    Destinations on one host (every tenant of one Datadog site, say) share keep-alive
    connections instead of each opening its own: with thousands of destinations a
    per-destination pool mostly re-connects. Requests stay per destination (one tenant's
    headers, never batched with another's); the pool keeps no cookies, so nothing one
    destination's server sets reaches another's requests; and the per-destination cap
    bounds what one slow destination can hold, as its own pool's limit did. aiohttp keys
    pooled connections by host, TLS context and proxy too, so a destination with its own
    CAs or client certificate never sends on another's connection.

    Proxies: a destination's own `proxy_url` (which passed the SSRF guard, and whose
    address the connect-time resolver checks like any other); else the deployment's
    HTTPS_PROXY / HTTP_PROXY unless NO_PROXY names the host, read once at start. The
    deployment's proxy is the operator's and may be private: requests through it use a
    second pool whose only connections are to that proxy. Either way the proxy resolves
    the destination's name, so the sink resolves and checks it itself first (every 60 s).
    """

    MAX_DESTINATIONS = 20_000  # cached destinations; the least recently used are forgotten
    HOST_CHECK_S = 60.0  # how long a proxied destination's checked addresses are trusted

    def __init__(self, encryption_keys: dict[str, bytes], allow_private: bool, concurrency: int, timeout_s: float,
                 trust_env: bool = True):
        self._keys = encryption_keys
        self._allow_private = allow_private
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 5))
        self._sessions: dict[bool, aiohttp.ClientSession] = {}  # by: through the deployment's proxy
        self._destinations: OrderedDict[bytes, _Destination] = OrderedDict()
        self._tokens = TokenCache(self.MAX_DESTINATIONS)
        # netrc is not read for destination hosts (aiohttp's trust_env would): a deployment's
        # credentials must never reach a tenant's host. Only the proxies' own, as aiohttp does.
        self._env_proxies = proxies_from_env() if trust_env else {}
        self._checked_hosts: OrderedDict[str, float] = OrderedDict()
        self._host_checker: AbstractResolver | None = None  # made on the loop, on first use
        self._timeout_s = timeout_s
        self._pool: Pool | None = None  # direct requests (streamer/sinks/transport.py); made on the loop

    def _shared_session(self, via_deployment_proxy: bool = False) -> aiohttp.ClientSession:
        session = self._sessions.get(via_deployment_proxy)
        if session is None or session.closed:
            public_only = not self._allow_private and not via_deployment_proxy
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60,
                                             resolver=PublicOnlyResolver() if public_only else None)
            session = self._sessions[via_deployment_proxy] = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "streamer/0.1"})
        return session

    def _route(self, url: str, proxy_url: str | None) -> "_Route":
        if proxy_url:
            return _Route({"proxy": proxy_url}, False, not self._allow_private)
        try:
            parsed = URL(url)
        except ValueError:
            return _Route({}, False, False)
        info = self._env_proxies.get(parsed.scheme)
        if info is None or (parsed.host and proxy_bypass(parsed.host)):
            return _Route({}, False, False)
        return _Route({"proxy": info.proxy, "proxy_auth": info.proxy_auth}, True, not self._allow_private)

    def _lean_pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(DefaultResolver() if self._allow_private else PublicOnlyResolver(),
                              connect_timeout_s=min(self._timeout_s, 5), total_timeout_s=self._timeout_s)
        return self._pool

    async def _exchange(self, target: "_Destination", url: str, headers: dict[str, str],
                        body: bytes) -> tuple[int, bytes, str | None]:
        """One POST: (status, body, Retry-After). Direct requests take the lean transport;
        through a proxy, or for a URL it does not take, aiohttp's session."""
        if target.lean:
            r = await self._lean_pool().request("POST", url, headers, body, target.route.options.get("ssl"))
            return r.status, r.body, r.retry_after
        session = self._shared_session(target.route.via_deployment_proxy)
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                **target.route.options) as resp:
            return resp.status, await resp.read(), resp.headers.get("Retry-After")

    def _destination(self, dest: dict[str, Any], scope: str, routed: bytes | None = None) -> "_Destination":
        """`routed`: the destination's bytes as the delivery record carries them (the same
        configuration always routes to the same bytes), so a batch's destinations are found
        without serialising each again; what is found must still be the destination given."""
        if routed is not None:
            fp = hashlib.sha256(scope.encode() + b"\0" + routed).digest()
            found = self._destinations.get(fp)
            if found is not None and (found.given is dest or found.given == dest):
                self._destinations.move_to_end(fp)
                return found
            if found is not None:  # bytes that are not this destination's: the canonical key
                routed = None
        if routed is None:
            fp = hashlib.sha256(scope.encode() + b"\1" + orjson.dumps(dest, option=orjson.OPT_SORT_KEYS)).digest()
            found = self._destinations.get(fp)
            if found is not None:
                self._destinations.move_to_end(fp)
                return found
        creds = credentials(dest, self._keys, scope)
        url = endpoint({**dest, "url": creds.url})
        route = self._route(url, dest.get("proxy_url"))
        tls_options = dest.get("tls") or {}
        if tls_options:
            route.options["ssl"] = tls.context(tls_options.get("ca_bundle"), tls_options.get("client_cert"),
                                               creds.client_key)
        token = None
        if creds.oauth2 is not None:
            token = _TokenSource(creds.oauth2, fp, self._route(creds.oauth2.token_url, dest.get("proxy_url")),
                                 None if self._allow_private else literal_problem(creds.oauth2.token_url))
        refused = None
        if not self._allow_private:
            proxy_problem = dest.get("proxy_url") and literal_problem(dest["proxy_url"])
            refused = literal_problem(url) or (proxy_problem and f"proxy {proxy_problem}")
        headers, channel = creds.headers, None
        if dest.get("provider") == "splunk" and dest.get("indexer_acknowledgements"):
            channel = str(uuid.uuid4())  # acks are per channel: one per destination and worker
            headers = {**headers, splunk.CHANNEL_HEADER: channel}
        found = _Destination({**dest, "url": url}, headers, asyncio.Semaphore(self._concurrency), creds.secrets,
                             refused, route, token, channel, dest,
                             lean="proxy" not in route.options and usable(url, headers))
        self._destinations[fp] = found
        if len(self._destinations) > self.MAX_DESTINATIONS:
            self._destinations.popitem(last=False)
        return found

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        secrets: list[str] = []
        try:
            first = deliveries[0]
            target = self._destination(destination, scope_of_destination(first.destination_id), first.destination)
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
        if target.token is not None and target.token.refused:
            return [Outcome(False, False, f"auth token_url refused: {target.token.refused}")] * len(deliveries)
        provider = PROVIDERS[target.dest.get("provider", "generic")]
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
                outcome = await self._post(target, provider.POLICY, req)
            for i in req.items:
                outcomes[i] = deliveries[i].outcome = outcome

        if len(encoded.requests) == 1:  # the common case: no task for a single request
            await post(encoded.requests[0])
        else:
            await asyncio.gather(*(post(r) for r in encoded.requests))
        return outcomes

    async def _post(self, target: "_Destination", policy, req) -> Outcome:
        token = ""
        try:
            await self._check_host(target.route, req.url)
            headers = req.headers
            if target.token is not None:
                token = await self._token(target.token)
                headers = {**req.headers, "Authorization": f"Bearer {token}"}
            status, body, retry_after = await self._exchange(target, req.url, headers, req.body)
            if status == 401 and target.token is not None and self._tokens.invalidate(target.token.key, token):
                # Revoked before it expired: a new token, and this request once more with it.
                token = await self._token(target.token)
                headers = {**req.headers, "Authorization": f"Bearer {token}"}
                status, body, retry_after = await self._exchange(target, req.url, headers, req.body)
            if policy.success(status, body):
                if target.token is not None:
                    self._tokens.accepted(target.token.key, token)
                if target.ack_channel is not None:
                    return await self._indexed(target, req.url, headers, body)
                return DELIVERED
            # Not cut to 200 characters here: send() redacts first, so no secret is cut in half.
            error = f"HTTP {status}: {body[:4096].decode('utf-8', 'replace')}"
            return Outcome(False, policy.retry(status), _without(error, token), retry_after_seconds(retry_after),
                           status)
        except TokenError as e:
            return e.outcome
        except asyncio.TimeoutError:
            return Outcome(False, True, "timed out")
        except (aiohttp.ClientError, OSError) as e:
            return Outcome(False, True, _without(f"network error: {type(e).__name__}: {e}", token))

    async def _indexed(self, target: "_Destination", url: str, headers: dict[str, str], answer: bytes) -> Outcome:
        """Splunk indexer acknowledgement: asks until Splunk says the request's events are
        indexed, for at most `splunk.ACK_WAIT_S` (see streamer/sinks/http/splunk.py)."""
        ack = splunk.ack_id(answer)
        if ack is None:  # the token has acknowledgement off: HEC's 200 is all there is
            return DELIVERED
        query_headers = {k: v for k, v in headers.items() if k.lower() not in ("content-encoding", "idempotency-key")}
        query_headers["Content-Type"] = "application/json"
        ack_url, query = splunk.ack_url(url, target.ack_channel), splunk.ack_query(ack)
        deadline, delay = time.monotonic() + splunk.ACK_WAIT_S, 0.05
        while True:
            status, body, _ = await self._exchange(target, ack_url, query_headers, query)
            if status == 200 and splunk.acknowledged(body, ack):
                return DELIVERED
            if time.monotonic() + delay > deadline:
                return Outcome(False, True, f"Splunk did not acknowledge indexing within {splunk.ACK_WAIT_S:g}s "
                                            f"(ackId {ack}): sent again")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def probe(self, destination: dict[str, Any], destination_id: str) -> Outcome:
        """The provider's validate or health endpoint (`settings test --check probe`; Sumo
        Logic and generic HTTP have none: their test writes). Held to the SSRF guard as a POST is:
        the probe URL is derived from the configured one (Datadog's API host from its intake
        host), so its literal address is checked here, the pool's resolver refuses private
        answers at connect time, and through a proxy the host is checked first, as for a POST."""
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
                    outcome = await self._get(target, probe)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            outcome = Outcome(False, True, f"internal error: {type(e).__name__}: {e}")
        if outcome.error:
            outcome = replace(outcome, error=redact_text(outcome.error, secrets)[:300])
        return outcome

    async def _get(self, target: "_Destination", probe) -> Outcome:
        try:
            await self._check_host(target.route, probe.url)
            session = self._shared_session(target.route.via_deployment_proxy)
            async with session.get(probe.url, headers=probe.headers, allow_redirects=False,
                                   **target.route.options) as resp:
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

    async def _token(self, source: "_TokenSource") -> str:
        await self._check_host(source.route, source.oauth2.token_url)
        session = self._shared_session(source.route.via_deployment_proxy)

        def request() -> TokenRequest:
            body, headers = source.oauth2.token_request()
            return TokenRequest(source.oauth2.token_url, body, headers, "oauth2 token", source.route.options)

        return await self._tokens.get(session, source.key, request)

    async def _check_host(self, route: "_Route", url: str) -> None:
        """Through a proxy the proxy resolves the destination's name, out of the resolver's
        sight: so it is resolved here first, and every address it has must be globally
        routable (the proxy may pick any). Raises OSError, as the resolver does."""
        if not route.check_host:
            return
        parsed = URL(url)
        host = parsed.host or ""
        now = time.monotonic()
        if self._checked_hosts.get(host, 0.0) > now:
            return
        if self._host_checker is None:
            self._host_checker = DefaultResolver()
        answers = await self._host_checker.resolve(host, parsed.port or 443, socket.AF_UNSPEC)
        bad = [a["host"] for a in answers if not address_allowed(a["host"])]
        if bad:
            raise OSError(f"destination host {host!r} resolves to {bad[0]}, which is not globally routable "
                          f"(checked before sending through a proxy)")
        self._checked_hosts[host] = now + self.HOST_CHECK_S
        self._checked_hosts.move_to_end(host)
        if len(self._checked_hosts) > self.MAX_DESTINATIONS:
            self._checked_hosts.popitem(last=False)

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._destinations.clear()
        self._tokens.clear()
        if self._host_checker is not None:
            await self._host_checker.close()
            self._host_checker = None


def _without(text: str, token: str) -> str:
    """An access token is not among a destination's configured secrets: redacted here."""
    return text.replace(token, "***") if token else text


@dataclass(slots=True)
class _Route:
    options: dict[str, Any]  # for session.post: proxy, proxy_auth, ssl
    via_deployment_proxy: bool  # the second pool, whose only connections are to that proxy
    check_host: bool  # a proxy resolves the host: check its addresses here first


@dataclass(slots=True)
class _TokenSource:
    oauth2: OAuth2
    key: bytes  # the destination's fingerprint: a token per destination
    route: _Route
    refused: str | None = None  # why the SSRF guard refuses the token URL


@dataclass(slots=True)
class _Destination:
    dest: dict[str, Any]  # as configured, with the provider's full endpoint URL
    headers: dict[str, str]  # plain and decrypted secret headers
    limit: asyncio.Semaphore  # concurrent requests to this destination
    secrets: list[str]  # the decrypted secrets, redacted from every error text
    refused: str | None = None  # why the SSRF guard refuses this URL
    route: _Route = field(default_factory=lambda: _Route({}, False, False))
    token: _TokenSource | None = None  # an OAuth2 destination's token
    ack_channel: str | None = None  # Splunk indexer acknowledgement: this destination's channel
    given: dict[str, Any] | None = None  # the destination as the caller gave it
    lean: bool = False  # direct: its requests take the lean transport (streamer/sinks/transport.py)

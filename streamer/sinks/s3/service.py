"""S3 sink I/O: one signed PUT per object at its deterministic key.

Why not aiobotocore's `put_object`: about a millisecond of CPU per call goes to botocore's
per-call machinery, ten times the request itself. Here botocore still does what it is
good at: credentials (a destination's own keys, else the default chain: environment,
profiles, assumed roles, web identity, container and instance roles, refreshed before
they expire), where a bucket's objects live (`request.object_base_url`, once per
destination) and SigV4 (`request.signed_headers`). The lean transport
(streamer/sinks/transport.py) carries objects under 1 MiB, aiohttp bigger ones and probes;
the sink-wide slots (POOL_LIMIT) bound the PUTs, and so the connections, in flight.

Per destination the sink keeps its URL, its credentials and an adaptive cap on concurrent
PUTs (`streamer.sinks.adaptive`): a partner-wide destination receives a large share of
all events and one object per event, so a small fixed cap would throttle the whole
partner; the cap grows while the store keeps up and halves when it signals overload, and
each destination has its own, so tenants stay isolated.

A destination's own `endpoint_url` (an S3-compatible store chosen by the tenant) is held to
the same SSRF guard as REST URLs at connect time: its requests go through a session whose
resolver refuses answers that are not globally routable, and an IP literal is checked
before the first request. The deployment's default endpoint (STREAMER_S3_ENDPOINT_URL) and
AWS itself are the operator's choice and are not restricted. Error texts leave the sink
with the destination's decrypted secret key redacted.

Retries are not done here: the engine decides (in-line backoff, the retry topic, or a dead
letter) from each object's outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp.resolver import DefaultResolver
import orjson
from aiobotocore.credentials import (AioAssumeRoleCredentialFetcher, AioCredentials,
                                     AioDeferredRefreshableCredentials)
from aiobotocore.session import get_session
from botocore.credentials import Credentials
from botocore.exceptions import NoCredentialsError
from yarl import URL

from streamer.config import Config
from streamer.settings.secrets import decrypt, redact_text, scope_of_destination
from streamer.settings.urls import literal_problem
from streamer.sinks.adaptive import AdaptiveLimit
from streamer.sinks.base import Delivery, Outcome
from streamer.sinks.http.service import PublicOnlyResolver
from streamer.sinks.transport import Pool
from streamer.sinks.s3.request import (BIG_BODY, FATAL_CODES, assume_role_args, bucket_url, classify,
                                       classify_head, connection_failure, object_base_url, object_headers,
                                       object_url, signed_headers, signed_headers_async, unexpected_failure)

__all__ = ["S3Sink", "FATAL_CODES"]


class S3Sink:
    MAX_DESTINATIONS = 20_000  # cached destinations; the least recently used are forgotten
    # PUTs in flight, all destinations together: at ~50 ms a PUT that is ~2,500 objects/s,
    # more than one worker's CPU signs and sends.
    POOL_LIMIT = 128
    INITIAL_CONCURRENCY = 4  # a destination's cap before it has shown how much it takes
    NO_CREDENTIALS_RECHECK_S = 30.0
    SLOW_S = 1.0  # a PUT of a small object answered later than this counts as overload

    def __init__(self, encryption_keys: dict[str, bytes], default_endpoint: str | None, concurrency: int,
                 timeout_s: float, *, default_credentials: Any = None, allow_private: bool | None = None) -> None:
        """`concurrency` is the most concurrent PUTs one destination may reach.
        `default_credentials` (a botocore credentials object, refreshable or not) is for
        destinations without their own keys; by default the standard AWS chain resolves it."""
        self._keys = encryption_keys
        self._default_endpoint = default_endpoint
        self._max_concurrency = max(1, concurrency)
        # As the aiobotocore client had them: connect and per-read timeouts, no total (a
        # 40 MB object may take longer than one read); the engine's deadline bounds a group.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self._default_credentials = default_credentials
        self._default_resolved = default_credentials is not None
        self._default_checked_at = 0.0
        self._default_lock = asyncio.Lock()
        # None: as the deployment says (STREAMER_ALLOW_PRIVATE_DESTINATIONS).
        self._allow_private = Config.from_env().allow_private_destinations if allow_private is None else allow_private
        self._sessions: dict[bool, aiohttp.ClientSession] = {}  # public_only -> session
        self._pools: dict[bool, Pool] = {}  # public_only -> the lean transport, for objects under BIG_BODY
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(self.POOL_LIMIT)  # PUTs in flight, all destinations together
        self._targets: OrderedDict[bytes, _Target] = OrderedDict()

    def _shared_session(self, public_only: bool) -> aiohttp.ClientSession:
        """The deployment's stores and AWS, or (`public_only`) tenants' own endpoints, whose
        resolver refuses private answers."""
        session = self._sessions.get(public_only)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self.POOL_LIMIT, limit_per_host=0, ttl_dns_cache=60,
                                             resolver=PublicOnlyResolver() if public_only else None)
            # No cookie jar: nothing one store sets reaches another destination's requests.
            session = self._sessions[public_only] = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "streamer/0.1"})
        return session

    def _lean_pool(self, public_only: bool) -> Pool:
        """Objects under BIG_BODY go on the lean transport (streamer/sinks/transport.py): about
        100 µs of client CPU less a PUT than aiohttp's. Its total timeout stands in for
        aiohttp's connect plus per-read timeouts, which a small object meets or not at once;
        big objects keep aiohttp's, which allow a long upload."""
        pool = self._pools.get(public_only)
        if pool is None:
            pool = self._pools[public_only] = Pool(PublicOnlyResolver() if public_only else DefaultResolver(),
                                                   self._timeout_s, 2 * self._timeout_s)
        return pool

    async def _target(self, dest: dict[str, Any], scope: str) -> "_Target":
        fp = hashlib.sha256(scope.encode() + orjson.dumps(dest, option=orjson.OPT_SORT_KEYS)).digest()
        found = self._targets.get(fp)
        if found is not None:
            self._targets.move_to_end(fp)
            return found
        region = dest.get("region") or "us-east-1"
        public_only = bool(dest.get("endpoint_url")) and not self._allow_private
        if public_only:
            refused = literal_problem(dest["endpoint_url"])
            if refused:
                raise _Refused(f"s3 endpoint refused: {refused}")
        endpoint = dest.get("endpoint_url") or self._default_endpoint
        # A botocore client resolves the URL (model files are read once): off the event loop.
        base = await asyncio.to_thread(object_base_url, region, endpoint, dest["bucket"])
        own, secrets = None, []
        if dest.get("access_key_id"):
            secret = decrypt(dest["secret_access_key"]["enc"], self._keys, scope, "destination.secret_access_key")
            own = Credentials(dest["access_key_id"], secret).get_frozen_credentials()
            secrets.append(secret)
        found = _Target(base, region, own, AdaptiveLimit(self.INITIAL_CONCURRENCY, self._max_concurrency),
                        public_only, secrets, object_headers(dest), dest.get("role_arn"), assume_role_args(dest))
        self._targets[fp] = found
        if len(self._targets) > self.MAX_DESTINATIONS:
            self._targets.popitem(last=False)
        return found

    async def _credentials(self, target: "_Target"):
        """Frozen credentials for one signature: the destination's own, or the default
        chain's, refreshed by botocore when they near expiry."""
        if target.role_arn is not None:
            creds = target.role_credentials or await self._assume(target)
        elif target.credentials is not None:
            return target.credentials
        else:
            creds = self._default_credentials
            if creds is None:
                creds = await self._resolve_default()
        frozen = creds.get_frozen_credentials()
        if inspect.isawaitable(frozen):  # aiobotocore's credentials refresh asynchronously
            frozen = await frozen
        return frozen

    async def _assume(self, target: "_Target"):
        """The destination's role, assumed with its own keys or the default chain's, as
        refreshable credentials: botocore renews them before they expire (15 minutes ahead,
        at the latest 10), once, however many PUTs are waiting."""
        if target.credentials is not None:
            source = AioCredentials(target.credentials.access_key, target.credentials.secret_key,
                                    target.credentials.token)
        else:
            source = self._default_credentials or await self._resolve_default()
        session = get_session()
        fetcher = AioAssumeRoleCredentialFetcher(
            lambda service, **kw: session.create_client(service, region_name=target.region, **kw),
            source, target.role_arn, extra_args=dict(target.role_args))
        target.role_credentials = AioDeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")
        return target.role_credentials

    async def _resolve_default(self):
        async with self._default_lock:
            if self._default_credentials is None and (
                    not self._default_resolved
                    or time.monotonic() - self._default_checked_at >= self.NO_CREDENTIALS_RECHECK_S):
                self._default_credentials = await get_session().get_credentials()
                self._default_resolved, self._default_checked_at = True, time.monotonic()
        if self._default_credentials is None:
            raise NoCredentialsError()
        return self._default_credentials

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        try:
            target = await self._target(destination, scope_of_destination(deliveries[0].destination_id))
        except asyncio.CancelledError:
            raise
        except _Refused as e:
            return [Outcome(False, False, str(e))] * len(deliveries)
        except Exception as e:  # a secret that does not decrypt, a bad region: retryable
            return [unexpected_failure(e)] * len(deliveries)
        session = self._shared_session(target.public_only)
        # Each outcome is also recorded on its delivery the moment it is known, so a group
        # the engine cuts off at its deadline parks only what was not stored.
        if len(deliveries) == 1:  # no task for a single object
            d = deliveries[0]
            d.outcome = await self._put(session, target, d)
            return [d.outcome]
        outcomes: list[Outcome] = [None] * len(deliveries)  # type: ignore[list-item]
        todo = iter(enumerate(deliveries))

        async def lane() -> None:
            for i, d in todo:
                outcomes[i] = d.outcome = await self._put(session, target, d)

        # As many lanes as the cap can ever admit; the gate decides how many run.
        await asyncio.gather(*(lane() for _ in range(min(len(deliveries), self._max_concurrency))))
        return outcomes

    async def _put(self, session: aiohttp.ClientSession, target: "_Target", d: Delivery) -> Outcome:
        """One PUT under the destination's cap and the sink-wide cap. The sink-wide slot is
        taken before signing, so a request never waits for a pooled connection after it was
        signed (and, when the engine's deadline cancels the group, was signed for nothing)."""
        gate = target.limit
        epoch = await gate.acquire()
        ok = overload = False
        try:
            async with self._slots:
                started = time.monotonic()
                credentials = await self._credentials(target)
                url = object_url(target.base_url, d.object_key)
                # encoded=True: send the path exactly as signed, not re-quoted by yarl.
                if len(d.message) < BIG_BODY:
                    pool = self._lean_pool(target.public_only)
                    # The Host the transport sends is the one signed, by construction.
                    headers = signed_headers(url, d.message, credentials, target.region, target.headers,
                                             host=pool.authority(url, encoded=True))
                    answer = await pool.request("PUT", url, headers, d.message, encoded=True)
                    outcome = classify(answer.status, answer.body)
                else:
                    headers = await signed_headers_async(url, d.message, credentials, target.region, target.headers)
                    async with session.put(URL(url, encoded=True), data=d.message, headers=headers,
                                           allow_redirects=False) as resp:
                        outcome = classify(resp.status, await resp.read())
                slow = time.monotonic() - started > self.SLOW_S and len(d.message) < BIG_BODY
            ok = outcome.ok
            # A retryable error or a slow answer: the store is busy, send less at once.
            overload = outcome.retryable or slow
            return _redacted(outcome, target.secrets)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
            overload = True
            return _redacted(connection_failure(e), target.secrets)
        except asyncio.CancelledError:
            overload = True  # the engine's deadline passed with this PUT still waiting or in flight
            raise
        except Exception as e:  # e.g. no credentials found: retry, never drop
            return _redacted(unexpected_failure(e), target.secrets)
        finally:
            gate.release(epoch, ok=ok, overload=overload)

    async def probe(self, destination: dict[str, Any], destination_id: str) -> Outcome:
        """HeadBucket (`settings test --check probe`): whether the bucket exists and these
        credentials reach it, writing nothing. The same path as a PUT: the destination's
        keys, assumed role or the default chain, its endpoint, and the SSRF guard on a
        tenant's own endpoint (the literal check in `_target`, the public-only resolver)."""
        try:
            target = await self._target(destination, scope_of_destination(destination_id))
            endpoint = destination.get("endpoint_url") or self._default_endpoint
            url = await asyncio.to_thread(bucket_url, target.region, endpoint, destination["bucket"])
        except asyncio.CancelledError:
            raise
        except _Refused as e:
            return Outcome(False, False, str(e))
        except Exception as e:
            return unexpected_failure(e)
        try:
            credentials = await self._credentials(target)
            headers = signed_headers(url, b"", credentials, target.region, {}, method="HEAD")
            async with self._shared_session(target.public_only).head(
                    URL(url, encoded=True), headers=headers, allow_redirects=False) as resp:
                outcome = classify_head(resp.status, resp.headers.get("x-amz-bucket-region"))
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
            outcome = connection_failure(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            outcome = unexpected_failure(e)
        return _redacted(outcome, target.secrets)

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()


def _redacted(outcome: Outcome, secrets: list[str]) -> Outcome:
    """The destination's own secrets never leave the sink in an error text (a store may
    echo what it was sent)."""
    if outcome.ok or not secrets or not outcome.error:
        return outcome
    return replace(outcome, error=redact_text(outcome.error, secrets)[:300])


class _Refused(Exception):
    """The SSRF guard refuses the destination's endpoint: a configuration error, not retried."""


@dataclass(slots=True)
class _Target:
    base_url: str  # the object URL up to the key
    region: str
    credentials: Any  # the destination's own frozen keys, or None for the default chain
    limit: AdaptiveLimit  # its concurrent PUTs
    public_only: bool  # a tenant's own endpoint: only globally routable addresses
    secrets: list[str]  # the decrypted secrets, redacted from every error text
    headers: dict  # signed with every PUT: Content-Type, encryption, storage class, ACL
    role_arn: str | None = None  # assumed with `credentials` (or the default chain) when set
    role_args: dict = field(default_factory=dict)  # RoleSessionName, ExternalId
    role_credentials: Any = None  # the assumed role's refreshable credentials, once made

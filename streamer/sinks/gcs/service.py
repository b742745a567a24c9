"""Google Cloud Storage sink I/O: one upload per event with `gcloud-aio-storage`.

The library does what is Google's own: the service-account JWT exchanged for an access
token, cached and refreshed before it expires (gcloud-aio-auth), or the deployment's
default credentials; the JSON API's upload requests. It is handed the sink's aiohttp
session, so every destination shares one connection pool and, unless private
destinations are allowed, the resolver that refuses private answers at connect time: the
SSRF guard covers the endpoint and the key's token URI alike.

The API root is always passed explicitly, so a stray STORAGE_EMULATOR_HOST in the
worker's environment can never switch a tenant's destination to unauthenticated requests.
Retries are the engine's, as for every sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from gcloud.aio.auth import Token
from gcloud.aio.storage import Storage

from streamer.settings.secrets import decrypt, scope_of_destination
from streamer.sinks.base import Delivery, Outcome
from streamer.sinks.gcs.request import CONTENT_TYPE, DEFAULT_API_ROOT, classify
from streamer.sinks.http.request import retry_after_seconds
from streamer.sinks.http.service import PublicOnlyResolver

SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]


class GcsSink:
    MAX_DESTINATIONS = 2_000  # cached clients; the least recently used are forgotten
    POOL_LIMIT = 128

    def __init__(self, encryption_keys: dict[str, bytes], allow_private: bool, concurrency: int,
                 timeout_s: float) -> None:
        self._keys = encryption_keys
        self._allow_private = allow_private
        self._concurrency = max(1, concurrency)
        self._timeout_s = max(1, int(timeout_s))
        self._session: aiohttp.ClientSession | None = None
        self._default_token: Token | None = None  # one for every destination without its own key
        self._targets: OrderedDict[bytes, _Target] = OrderedDict()

    def _shared_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.POOL_LIMIT, limit_per_host=0, ttl_dns_cache=60,
                                             resolver=None if self._allow_private else PublicOnlyResolver())
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _target(self, dest: dict[str, Any], scope: str) -> "_Target":
        fp = hashlib.sha256(scope.encode() + orjson.dumps(dest, option=orjson.OPT_SORT_KEYS)).digest()
        found = self._targets.get(fp)
        if found is not None:
            self._targets.move_to_end(fp)
            return found
        session = self._shared_session()
        if dest.get("service_account_key"):
            key = io.StringIO(decrypt(dest["service_account_key"]["enc"], self._keys, scope,
                                         "destination.service_account_key"))
            token = Token(service_file=key, session=session, scopes=SCOPES)
        else:
            if self._default_token is None:
                self._default_token = Token(session=session, scopes=SCOPES)
            token = self._default_token
        storage = Storage(token=token, session=session, api_root=dest.get("endpoint_url") or DEFAULT_API_ROOT,
                          api_is_dev=False)
        found = _Target(storage, asyncio.Semaphore(self._concurrency))
        self._targets[fp] = found
        if len(self._targets) > self.MAX_DESTINATIONS:
            self._targets.popitem(last=False)
        return found

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        try:
            target = self._target(destination, scope_of_destination(deliveries[0].destination_id))
        except Exception as e:  # a key that cannot be used: retry, never drop
            outcome = Outcome(False, True, f"gcs error: {type(e).__name__}: {e}"[:300])
            for d in deliveries:
                d.outcome = outcome
            return [outcome] * len(deliveries)
        bucket = destination["bucket"]

        async def put(d: Delivery) -> Outcome:
            async with target.slots:
                d.outcome = await self._put(target.storage, bucket, d)  # known at once, for the deadline
                return d.outcome

        if len(deliveries) == 1:
            return [await put(deliveries[0])]
        return list(await asyncio.gather(*(put(d) for d in deliveries)))

    async def _put(self, storage: Storage, bucket: str, d: Delivery) -> Outcome:
        return await _call(storage.upload(bucket, d.object_key, d.message, content_type=CONTENT_TYPE,
                                          timeout=self._timeout_s))

    async def probe(self, destination: dict[str, Any], destination_id: str) -> Outcome:
        """Get Bucket (`settings test --check probe`): whether the bucket exists and the key
        (its token exchange included) reaches it, writing nothing, through the same guarded
        pool as an upload. It needs storage.buckets.get, which a writer-only role such as
        Storage Object Creator lacks (403): such a destination is tested with `--check write`."""
        try:
            target = self._target(destination, scope_of_destination(destination_id))
        except Exception as e:
            return Outcome(False, True, f"gcs error: {type(e).__name__}: {e}"[:300])
        return await _call(target.storage.get_bucket_metadata(destination["bucket"],
                                                                           timeout=self._timeout_s))

    async def close(self) -> None:
        self._targets.clear()
        if self._session is not None:
            await self._session.close()


async def _call(request) -> Outcome:
    """The outcome of one call to the JSON API: its error mapped as an upload's is."""
    try:
        await request
        return Outcome(True, status=200)
    except aiohttp.ClientResponseError as e:  # the store's (or the token endpoint's) answer
        return classify(e.status, e.message, retry_after_seconds((e.headers or {}).get("Retry-After")))
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
        return Outcome(False, True, f"gcs connection: {type(e).__name__}: {e}"[:300])
    except asyncio.CancelledError:
        raise
    except Exception as e:  # e.g. default credentials not available yet: retry, never drop
        return Outcome(False, True, f"gcs error: {type(e).__name__}: {e}"[:300])


@dataclass(slots=True)
class _Target:
    storage: Storage
    slots: asyncio.Semaphore  # its concurrent uploads

"""Azure Blob Storage sink I/O: one Put Blob per event with `azure-storage-blob`'s aio client.

The SDK does what is Azure's own: Shared Key and SAS signing, Entra tokens for the
deployment's default credentials (azure-identity, refreshed before expiry), the REST
version headers. Its transport is handed the sink's aiohttp session, so every destination
shares one bounded connection pool and, unless private destinations are allowed, the
resolver that refuses private answers at connect time (the SSRF guard, as for REST).

The SDK's own retries are off (`retry_total=0`): the engine decides in-line backoff, the
retry topic or a dead letter from each blob's outcome, as for every other sink.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from streamer.settings.secrets import decrypt, scope_of_destination
from streamer.sinks.azure_blob.request import CONTENT_TYPE, classify, credential
from streamer.sinks.base import Delivery, Outcome
from streamer.sinks.http.request import retry_after_seconds
from streamer.sinks.http.service import PublicOnlyResolver

# The SDK logs every request at INFO (URLs, headers); the worker logs its own outcomes.
logging.getLogger("azure").setLevel(logging.WARNING)

_CONTENT = ContentSettings(content_type=CONTENT_TYPE)


class AzureBlobSink:
    MAX_DESTINATIONS = 2_000  # cached container clients; the least recently used are closed
    POOL_LIMIT = 128

    def __init__(self, encryption_keys: dict[str, bytes], allow_private: bool, concurrency: int,
                 timeout_s: float) -> None:
        self._keys = encryption_keys
        self._allow_private = allow_private
        self._concurrency = max(1, concurrency)
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._default_credential: Any = None  # azure-identity's chain, made on first use
        self._targets: OrderedDict[bytes, _Target] = OrderedDict()

    def _shared_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.POOL_LIMIT, limit_per_host=0, ttl_dns_cache=60,
                                             resolver=None if self._allow_private else PublicOnlyResolver())
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _credential(self, dest: dict[str, Any], scope: str):
        c = credential(dest, lambda env, field: decrypt(env, self._keys, scope, field))
        if c.kind == "key":
            return AzureNamedKeyCredential(c.account_name, c.secret)
        if c.kind == "sas":
            return AzureSasCredential(c.secret)
        if self._default_credential is None:
            from azure.identity.aio import DefaultAzureCredential  # only deployments that use it pay the import
            self._default_credential = DefaultAzureCredential()
        return self._default_credential

    async def _target(self, dest: dict[str, Any], scope: str) -> "_Target":
        fp = hashlib.sha256(scope.encode() + orjson.dumps(dest, option=orjson.OPT_SORT_KEYS)).digest()
        found = self._targets.get(fp)
        if found is not None:
            self._targets.move_to_end(fp)
            return found
        transport = AioHttpTransport(session=self._shared_session(), session_owner=False)
        client = ContainerClient(dest["account_url"], dest["container"], credential=self._credential(dest, scope),
                                 transport=transport, retry_total=0, connection_timeout=self._timeout_s,
                                 read_timeout=self._timeout_s)
        found = _Target(client, asyncio.Semaphore(self._concurrency))
        self._targets[fp] = found
        if len(self._targets) > self.MAX_DESTINATIONS:
            _, old = self._targets.popitem(last=False)
            await old.client.close()
        return found

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        try:
            target = await self._target(destination, scope_of_destination(deliveries[0].destination_id))
        except Exception as e:  # a credential that cannot be used: retry, never drop
            outcome = Outcome(False, True, f"azure_blob error: {type(e).__name__}: {e}"[:300])
            for d in deliveries:
                d.outcome = outcome
            return [outcome] * len(deliveries)

        async def put(d: Delivery) -> Outcome:
            async with target.slots:
                d.outcome = await self._put(target.client, d)  # known at once: the deadline parks only the rest
                return d.outcome

        if len(deliveries) == 1:
            return [await put(deliveries[0])]
        return list(await asyncio.gather(*(put(d) for d in deliveries)))

    async def probe(self, destination: dict[str, Any], destination_id: str) -> Outcome:
        """Get Container Properties (`settings test --check probe`): whether the container
        exists and the credential reaches it, writing nothing, through the same client and
        guarded pool as a Put Blob. A SAS that grants only write and create is refused here
        (403) although a write works: such a destination is tested with `--check write`."""
        try:
            target = await self._target(destination, scope_of_destination(destination_id))
        except Exception as e:
            return Outcome(False, True, f"azure_blob error: {type(e).__name__}: {e}"[:300])
        return await _call(target.client.get_container_properties(), 200)

    @staticmethod
    async def _put(client: ContainerClient, d: Delivery) -> Outcome:
        return await _call(client.upload_blob(d.object_key, d.message, overwrite=True, content_settings=_CONTENT), 201)

    async def close(self) -> None:
        for target in self._targets.values():
            await target.client.close()
        self._targets.clear()
        if self._default_credential is not None:
            await self._default_credential.close()
        if self._session is not None:
            await self._session.close()


async def _call(request, ok_status: int) -> Outcome:
    """The outcome of one SDK call: its error mapped as a Put Blob's is."""
    try:
        await request
        return Outcome(True, status=ok_status)
    except (ServiceRequestError, ServiceResponseError) as e:  # no answer: connection, timeout
        return Outcome(False, True, f"azure_blob connection: {type(e).__name__}: {e}"[:300])
    except HttpResponseError as e:
        if e.status_code is None:
            # No answer from storage: the credential failed before the request (a
            # ClientAuthenticationError from DefaultAzureCredential: no identity, the
            # identity endpoint refusing). Retried: the identity may come; never dropped.
            return Outcome(False, True, f"azure_blob credential: {str(e).split(chr(10), 1)[0]}"[:300])
        headers = e.response.headers if e.response is not None else {}
        return classify(e.status_code, getattr(e, "error_code", None), e.reason or str(e).split("\n", 1)[0],
                        retry_after_seconds(headers.get("Retry-After")))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # e.g. default credentials not available yet: retry, never drop
        return Outcome(False, True, f"azure_blob error: {type(e).__name__}: {e}"[:300])


@dataclass(slots=True)
class _Target:
    client: ContainerClient
    slots: asyncio.Semaphore  # its concurrent PUTs

"""S3 sink: one object per event at its deterministic key, a client reused per destination."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, EndpointConnectionError

from streamer.settings.secrets import decrypt
from streamer.sinks.base import DELIVERED, Delivery, Outcome

# S3 error codes that no retry will fix: the configuration is wrong.
FATAL_CODES = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
               "AllAccessDisabled", "InvalidBucketName", "AuthorizationHeaderMalformed"}


class S3Sink:
    def __init__(self, encryption_keys: dict[str, bytes], default_endpoint: str | None, concurrency: int,
                 timeout_s: float):
        self._keys = encryption_keys
        self._default_endpoint = default_endpoint
        self._concurrency = concurrency
        self._timeout = timeout_s
        self._session = get_session()
        self._clients: dict[str, tuple[Any, Any]] = {}  # fingerprint -> (context manager, client)

    async def _client(self, dest: dict[str, Any]):
        fp = hashlib.sha256(repr(sorted(dest.items())).encode()).hexdigest()
        if fp not in self._clients:
            creds = {}
            if dest.get("access_key_id"):
                creds = {"aws_access_key_id": dest["access_key_id"],
                         "aws_secret_access_key": decrypt(dest["secret_access_key"]["enc"], self._keys)}
            cfg = AioConfig(connect_timeout=self._timeout, read_timeout=self._timeout,
                            retries={"max_attempts": 1}, max_pool_connections=self._concurrency)
            cm = self._session.create_client("s3", region_name=dest.get("region") or "us-east-1",
                                             endpoint_url=dest.get("endpoint_url") or self._default_endpoint,
                                             config=cfg, **creds)
            self._clients[fp] = (cm, await cm.__aenter__())
        return self._clients[fp][1]

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        client = await self._client(destination)
        sem = asyncio.Semaphore(self._concurrency)

        async def put(d: Delivery) -> Outcome:
            d.outcome = await attempt(d)
            return d.outcome

        async def attempt(d: Delivery) -> Outcome:
            async with sem:
                try:
                    await client.put_object(Bucket=destination["bucket"], Key=d.object_key, Body=d.message,
                                            ContentType="application/json")
                    return DELIVERED
                except ClientError as e:
                    code = e.response.get("Error", {}).get("Code", "")
                    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                    retryable = code not in FATAL_CODES and (status >= 500 or status in (0, 408, 429)
                                                            or code in ("SlowDown", "RequestTimeout"))
                    return Outcome(False, retryable, f"s3 {code or status}: {e.response.get('Error', {}).get('Message', '')}"[:300])
                except (EndpointConnectionError, asyncio.TimeoutError, OSError) as e:
                    return Outcome(False, True, f"s3 connection: {type(e).__name__}: {e}"[:300])
                except Exception as e:  # botocore's many transport errors: retry, never drop
                    return Outcome(False, True, f"s3 error: {type(e).__name__}: {e}"[:300])

        return list(await asyncio.gather(*(put(d) for d in deliveries)))

    async def close(self) -> None:
        for cm, _client in self._clients.values():
            await cm.__aexit__(None, None, None)
        self._clients.clear()

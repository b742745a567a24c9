"""S3 sink: one object per event at its deterministic key, a client reused per destination.

A destination's own `endpoint_url` (an S3-compatible store chosen by the tenant) is held to
the same SSRF guard as REST URLs at connect time: the client's resolver refuses answers that
are not globally routable, and an IP literal is checked before any client is built. The
deployment's default endpoint (STREAMER_S3_ENDPOINT_URL) and AWS itself are the operator's
choice and are not restricted. Error texts leave the sink with the decrypted secret key
redacted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, EndpointConnectionError

from streamer.config import Config
from streamer.settings.secrets import decrypt, redact_text, scope_of_destination
from streamer.settings.urls import literal_problem
from streamer.sinks.base import DELIVERED, Delivery, Outcome
from streamer.sinks.http.service import PublicOnlyResolver

log = logging.getLogger(__name__)

# S3 error codes that no retry will fix: the configuration is wrong.
FATAL_CODES = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
               "AllAccessDisabled", "InvalidBucketName", "AuthorizationHeaderMalformed"}


class S3Sink:
    def __init__(self, encryption_keys: dict[str, bytes], default_endpoint: str | None, concurrency: int,
                 timeout_s: float, allow_private: bool | None = None):
        self._keys = encryption_keys
        self._default_endpoint = default_endpoint
        self._concurrency = concurrency
        self._timeout = timeout_s
        # None: as the deployment says (STREAMER_ALLOW_PRIVATE_DESTINATIONS).
        self._allow_private = Config.from_env().allow_private_destinations if allow_private is None else allow_private
        self._session = get_session()
        self._clients: dict[str, tuple[Any, Any, list[str]]] = {}  # fingerprint -> (context manager, client, secrets)

    async def _client(self, dest: dict[str, Any], scope: str) -> tuple[Any, list[str]]:
        fp = hashlib.sha256((scope + repr(sorted(dest.items()))).encode()).hexdigest()
        if fp not in self._clients:
            creds, secrets = {}, []
            if dest.get("access_key_id"):
                secret = decrypt(dest["secret_access_key"]["enc"], self._keys, scope, "destination.secret_access_key")
                creds = {"aws_access_key_id": dest["access_key_id"], "aws_secret_access_key": secret}
                secrets.append(secret)
            connector_args = {}
            own_endpoint = dest.get("endpoint_url")
            if own_endpoint and not self._allow_private:
                refused = literal_problem(own_endpoint)
                if refused:
                    raise _Refused(f"s3 endpoint refused: {refused}")
                connector_args["resolver"] = PublicOnlyResolver()
            cfg = AioConfig(connect_timeout=self._timeout, read_timeout=self._timeout,
                            retries={"max_attempts": 1}, max_pool_connections=self._concurrency,
                            connector_args=connector_args or None)
            cm = self._session.create_client("s3", region_name=dest.get("region") or "us-east-1",
                                             endpoint_url=own_endpoint or self._default_endpoint,
                                             config=cfg, **creds)
            self._clients[fp] = (cm, await cm.__aenter__(), secrets)
        return self._clients[fp][1], self._clients[fp][2]

    async def send(self, destination: dict[str, Any], deliveries: list[Delivery]) -> list[Outcome]:
        secrets: list[str] = []
        try:
            client, secrets = await self._client(destination, scope_of_destination(deliveries[0].destination_id))
        except asyncio.CancelledError:
            raise
        except _Refused as e:
            return [Outcome(False, False, str(e))] * len(deliveries)
        except Exception as e:  # a secret that does not decrypt, a bad region: retryable, redacted
            error = redact_text(f"s3 client error: {type(e).__name__}: {e}", secrets)[:300]
            log.error("s3 sink error: %s", error)
            return [Outcome(False, True, error)] * len(deliveries)
        sem = asyncio.Semaphore(self._concurrency)

        def failed(retryable: bool, text: str) -> Outcome:
            return Outcome(False, retryable, redact_text(text, secrets)[:300])

        async def put(d: Delivery) -> Outcome:
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
                    return failed(retryable, f"s3 {code or status}: {e.response.get('Error', {}).get('Message', '')}")
                except (EndpointConnectionError, asyncio.TimeoutError, OSError) as e:
                    return failed(True, f"s3 connection: {type(e).__name__}: {e}")
                except Exception as e:  # botocore's many transport errors: retry, never drop
                    return failed(True, f"s3 error: {type(e).__name__}: {e}")

        return list(await asyncio.gather(*(put(d) for d in deliveries)))

    async def close(self) -> None:
        for cm, _client, _secrets in self._clients.values():
            await cm.__aexit__(None, None, None)
        self._clients.clear()


class _Refused(Exception):
    """The SSRF guard refuses the destination's endpoint: a configuration error, not retried."""

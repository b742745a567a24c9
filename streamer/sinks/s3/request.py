"""Building and judging one S3 PutObject request, without a botocore client per call.

aiobotocore's `put_object` spends about a millisecond of CPU per call in botocore's
per-call machinery (parameter validation, serialisation, endpoint rules, the event
system, checksums, response parsing); the request itself is one signed PUT. So the hot
path here is just that: the object's URL, botocore's own SigV4 signature, and the S3
error code read from the response. Nothing here does network I/O.

What botocore is good at stays botocore's: `object_base_url` asks a real botocore client
where PutObject would go (endpoint rules: path-style for IP and custom endpoints,
virtual-host for AWS, dotted buckets, regions), once per destination; `signed_headers`
signs with `S3SigV4Auth` on an `AWSRequest`. SigV4 is not written here.
"""

from __future__ import annotations

import asyncio
import threading
import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Any

from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.session import get_session
from botocore.utils import percent_encode

from streamer.sinks.base import DELIVERED, Outcome

CONTENT_TYPE = "application/json"

# S3 error codes that no retry will fix: the configuration is wrong.
FATAL_CODES = frozenset({"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                         "AllAccessDisabled", "InvalidBucketName", "AuthorizationHeaderMalformed"})
# Codes that are worth retrying whatever their status.
RETRY_CODES = frozenset({"SlowDown", "RequestTimeout"})

_SENTINEL_KEY = "streamer-object-key"


class _Captured(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def _capture(request, **_kwargs) -> None:
    # Stops the call before it is sent: we only want the URL botocore resolved.
    raise _Captured(request.url)


_clients_lock = threading.Lock()


_clients: dict[tuple[str, str | None], Any] = {}
_session: Any = None


def _resolver_client(region: str, endpoint_url: str | None):
    """An unsigned botocore client used only to resolve URLs (never sends anything).

    One per (region, endpoint), made under a lock and looked up again inside it: a worker's
    first batch resolves dozens of destinations at once on threads, and each thread making
    its own client cost about 100 ms of CPU apiece (measured: a second of the S3 benchmark's
    worker). One botocore session for all: it caches the models it has read, so a client for
    another region costs about 8 ms instead of about 100."""
    global _session
    key = (region, endpoint_url)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if _session is None:
                _session = get_session()
            client = _session.create_client(
                "s3", region_name=region, endpoint_url=endpoint_url,
                config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1},
                              request_checksum_calculation="when_required"))
            client.meta.events.register("before-send.s3.PutObject", _capture)
            client.meta.events.register("before-send.s3.HeadBucket", _capture)
            if len(_clients) >= 256:
                _clients.pop(next(iter(_clients)))
            _clients[key] = client
        return client


@lru_cache(maxsize=20_000)
def object_base_url(region: str, endpoint_url: str | None, bucket: str) -> str:
    """The URL PutObject uses for this bucket, up to the key: exactly what aiobotocore's
    `put_object` addressed before (same endpoint rules), resolved once per destination.
    The key is a deterministic suffix of the URL, so `object_url` only appends it."""
    client = _resolver_client(region, endpoint_url)
    try:
        client.put_object(Bucket=bucket, Key=_SENTINEL_KEY, Body=b"")
    except _Captured as c:
        url = c.url
    else:  # pragma: no cover - before-send always raises
        raise RuntimeError("botocore sent a request while resolving a URL")
    path_end = url.split("?", 1)[0]
    if not path_end.endswith("/" + _SENTINEL_KEY):
        raise ValueError(f"unexpected S3 URL layout: {url}")
    return path_end[: -len(_SENTINEL_KEY)]


@lru_cache(maxsize=1024)
def bucket_url(region: str, endpoint_url: str | None, bucket: str) -> str:
    """The URL HeadBucket uses (`settings test --check probe`), by the same endpoint rules."""
    try:
        _resolver_client(region, endpoint_url).head_bucket(Bucket=bucket)
    except _Captured as c:
        return c.url
    raise RuntimeError("botocore sent a request while resolving a URL")  # pragma: no cover


def object_url(base_url: str, key: str) -> str:
    """The object's URL: the key percent-encoded as botocore encodes `{Key+}` ('/' and '~' kept)."""
    return base_url + percent_encode(key, safe="/~")


def object_headers(dest: dict[str, Any]) -> dict[str, str]:
    """The PUT's headers beyond the body's: encryption, storage class, canned ACL. They are
    signed with the request, so S3 refuses them if anything on the way changes them."""
    headers = {"Content-Type": CONTENT_TYPE}
    if dest.get("server_side_encryption"):
        headers["x-amz-server-side-encryption"] = dest["server_side_encryption"]
        if dest.get("kms_key_id"):
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = dest["kms_key_id"]
    if dest.get("storage_class"):
        headers["x-amz-storage-class"] = dest["storage_class"]
    if dest.get("acl"):
        headers["x-amz-acl"] = dest["acl"]
    return headers


def assume_role_args(dest: dict[str, Any]) -> dict[str, str]:
    """STS AssumeRole's arguments besides the role: the session name and the external id."""
    args = {"RoleSessionName": dest.get("role_session_name") or "streamer"}
    if dest.get("external_id"):
        args["ExternalId"] = dest["external_id"]
    return args


_PLAIN = {"Content-Type": CONTENT_TYPE}


def signed_headers(url: str, body: bytes, credentials: Any, region: str,
                   headers: dict[str, str] = _PLAIN, method: str = "PUT", host: str | None = None) -> dict[str, str]:
    """Headers of a PUT of `body` to `url` (or of another `method`, such as HeadBucket's
    HEAD), signed with botocore's S3 SigV4 signer.

    `credentials` are frozen (access key, secret key, token), so a refresh cannot change
    them halfway through a signature. The payload's SHA-256 is signed (botocore's default
    for a PUT without Content-MD5), so S3 checks the body end to end.

    `host`: the Host header the transport will send. It is signed as given and left out of
    the result (the transport writes it). Without it botocore derives the host from the URL
    on every signature, which was 5% of an S3 worker's samples."""
    given = dict(headers)
    if host is not None:
        given["host"] = host
    request = AWSRequest(method=method, url=url, data=body, headers=given)
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    signed = dict(request.headers.items())
    if host is not None:
        del signed["host"]
    return signed


# Bodies this big are hashed and signed on a thread: hashing 40 MB takes tens of ms, which
# would stall every other destination on the event loop (hashlib releases the GIL).
BIG_BODY = 1 << 20


async def signed_headers_async(url: str, body: bytes, credentials: Any, region: str,
                               headers: dict[str, str] = _PLAIN) -> dict[str, str]:
    if len(body) >= BIG_BODY:
        return await asyncio.to_thread(signed_headers, url, body, credentials, region, headers)
    return signed_headers(url, body, credentials, region, headers)


def error_code(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body; empty strings when there is none."""
    if not body:
        return "", ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", body[:200].decode("utf-8", "replace")
    return (root.findtext("Code") or "").strip(), (root.findtext("Message") or "").strip()


def classify(status: int, body: bytes) -> Outcome:
    """The outcome of a PUT's response, with the rules the aiobotocore sink had: a code in
    FATAL_CODES never retries; otherwise 5xx, 408, 429, SlowDown and RequestTimeout do,
    and any other 4xx (or 3xx: a redirect to another region) is permanent."""
    if 200 <= status < 300:
        return DELIVERED
    code, message = error_code(body)
    retryable = code not in FATAL_CODES and (status >= 500 or status in (0, 408, 429) or code in RETRY_CODES)
    return Outcome(False, retryable, f"s3 {code or status}: {message}"[:300], status=status or None)


WRITE_CHECK = "s3 PutObject"
PROBE_CHECK = "s3 HeadBucket"
# A HEAD answer has no body, so no S3 error code: what its status means instead.
_HEAD_MEANING = {
    404: "NoSuchBucket: the bucket does not exist",
    403: ("Forbidden: wrong credentials, or no s3:ListBucket on the bucket (HeadBucket needs it; a policy "
          "that allows only s3:PutObject answers 403 here although writes work: test with --check write)"),
    400: "Bad Request (often a region or signature mismatch)",
}


def classify_head(status: int, bucket_region: str | None = None) -> Outcome:
    """The outcome of a HeadBucket: 200 the bucket exists and these credentials may list it."""
    if 200 <= status < 300:
        return Outcome(True, status=status)
    if status in (301, 307) or (bucket_region and status == 400):
        what = f"the bucket is in region {bucket_region or 'another region'}, not the configured one"
    else:
        what = _HEAD_MEANING.get(status, "HeadBucket gives no reason (a HEAD answer has no body)")
    retryable = status >= 500 or status in (0, 408, 429)
    return Outcome(False, retryable, f"s3 {status} {what}"[:300], status=status)


def connection_failure(exc: BaseException) -> Outcome:
    """Timeouts and connection errors: retryable, as before."""
    return Outcome(False, True, f"s3 connection: {type(exc).__name__}: {exc}"[:300])


def unexpected_failure(exc: BaseException) -> Outcome:
    """Anything else (e.g. no credentials found): retry, never drop."""
    return Outcome(False, True, f"s3 error: {type(exc).__name__}: {exc}"[:300])

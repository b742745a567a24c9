"""Google Cloud Storage: what a service-account key must hold, and what an error means. Pure.

The object name is the delivery's object key (streamer/keys.py, spec 4.1), so a
re-delivered event overwrites its own object: idempotent, as S3 keys are.
"""

from __future__ import annotations

import orjson

from streamer.sinks.base import DELIVERED, Outcome

CONTENT_TYPE = "application/json"
WRITE_CHECK = "gcs upload"
PROBE_CHECK = "gcs Get Bucket"
DEFAULT_API_ROOT = "https://storage.googleapis.com"
KEY_FIELDS = ("client_email", "private_key", "token_uri")


def parse_key(text: str) -> dict:
    """A service-account JSON key, or ValueError naming what is wrong with it (never its content)."""
    try:
        key = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("service_account_key is not JSON") from None
    if not isinstance(key, dict) or key.get("type") != "service_account":
        raise ValueError("service_account_key is not a service-account key (type must be service_account)")
    missing = [f for f in KEY_FIELDS if not isinstance(key.get(f), str) or not key[f]]
    if missing:
        raise ValueError(f"service_account_key lacks {', '.join(missing)}")
    return key


GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def check_token_uri(key: dict, allow_private: bool) -> str | None:
    """The key's token URI is a URL the tenant controls like any other, and the worker POSTs
    to it; it sits inside the encrypted key, where the command-time host lookup cannot see
    it. So it must be Google's, unless private destinations are allowed (tests, emulators);
    the connect-time resolver still refuses private answers either way."""
    if allow_private or key["token_uri"] == GOOGLE_TOKEN_URI:
        return None
    return f"service_account_key token_uri must be {GOOGLE_TOKEN_URI}"


def classify(status: int | None, message: str = "", retry_after: float | None = None) -> Outcome:
    """The outcome of an upload: 5xx, 408, 429 and no answer retry; 401, 403, 404 (no such
    bucket) and any other 4xx are the configuration's fault and never do."""
    status = status or 0
    if 200 <= status < 300:
        return DELIVERED
    retryable = status >= 500 or status in (0, 408, 429)
    return Outcome(False, retryable, f"gcs {status}: {message}"[:300], retry_after, status or None)

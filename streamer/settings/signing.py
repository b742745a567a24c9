"""HMAC-SHA256 signatures over a canonical encoding of a settings command (spec section 7).

Canonical form: the command's JSON object without `signature`, keys sorted, no whitespace
(orjson OPT_SORT_KEYS). It is computed on the raw JSON as received, before any model
coercion, so what is verified is exactly what the admin signed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson


def canonical(command: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in command.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)


def sign(command: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(command), hashlib.sha256).hexdigest()


def signed(command: dict[str, Any], key_id: str, key: bytes) -> dict[str, Any]:
    body = {**command, "key_id": key_id}
    body.pop("signature", None)
    return {**body, "signature": sign(body, key)}


def verify(command: dict[str, Any], keys: dict[str, bytes]) -> str | None:
    """None when the signature is valid, else the reason it is not."""
    key_id, signature = command.get("key_id"), command.get("signature")
    if not isinstance(signature, str) or not signature:
        return "command is not signed (no signature)"
    if not isinstance(key_id, str) or key_id not in keys:
        return f"unknown signing key id {str(key_id)[:64]!r}"
    try:
        expected = sign(command, keys[key_id])
    except (orjson.JSONEncodeError, TypeError) as e:  # nested deeper than orjson writes (255 levels)
        return f"command has no canonical form to verify: {e}"
    if not hmac.compare_digest(expected, signature):
        return f"signature does not match (key id {key_id!r})"
    return None

"""Destination secrets: AES-256-GCM envelopes `v1:<key id>:<base64url(nonce|ciphertext)>`.

The key id lets the deployment rotate keys: encryption uses the first key of
STREAMER_ENCRYPTION_KEYS, decryption any key listed. Plaintext exists only in the sink's
memory at request time; everything written (topics, logs, results) carries the envelope
or `***`.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REDACTED = "***"
_AAD = b"streamer-secret-v1"


class SecretError(ValueError):
    pass


def encrypt(plaintext: str, keys: dict[str, bytes]) -> str:
    if not keys:
        raise SecretError("no encryption key configured (STREAMER_ENCRYPTION_KEYS)")
    key_id, key = next(iter(keys.items()))
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _AAD)
    return f"v1:{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(envelope: str, keys: dict[str, bytes]) -> str:
    try:
        version, key_id, payload = envelope.split(":", 2)
    except ValueError:
        raise SecretError("secret is not an encrypted envelope") from None
    if version != "v1":
        raise SecretError(f"unknown secret envelope version {version!r}")
    if key_id not in keys:
        raise SecretError(f"secret was encrypted with unknown key id {key_id!r}")
    try:
        raw = base64.urlsafe_b64decode(payload)
        return AESGCM(keys[key_id]).decrypt(raw[:12], raw[12:], _AAD).decode()
    except Exception:
        raise SecretError(f"secret does not decrypt with key id {key_id!r}") from None


def redact(value: Any) -> Any:
    """Replace every encrypted envelope (and its plaintext, if present) with `***`."""
    if isinstance(value, dict):
        if set(value) == {"enc"}:
            return REDACTED
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def find_envelopes(value: Any) -> list[str]:
    if isinstance(value, dict):
        if set(value) == {"enc"}:
            return [value["enc"]]
        return [e for v in value.values() for e in find_envelopes(v)]
    if isinstance(value, list):
        return [e for v in value for e in find_envelopes(v)]
    return []

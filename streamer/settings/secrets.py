"""Destination secrets: AES-256-GCM envelopes `v2:<key id>:<base64url(nonce|ciphertext)>`.

The key id lets the deployment rotate keys: encryption uses the first key of
STREAMER_ENCRYPTION_KEYS, decryption any key listed. Plaintext exists only in the sink's
memory at request time; everything written (topics, logs, results) carries the envelope
or `***`.

Binding (v2): the associated data names the scope and field the secret belongs to,
`streamer-secret-v2|ws/78125|destination.api_key` (scopes as in the settings table: `ws/<id>`,
`partner/<id>`; fields as paths in the configuration). An envelope copied into another
workspace's or partner's configuration, or into another field, does not decrypt there, so
a secret cannot be moved to a destination its owner did not choose.

v1 envelopes (constant associated data) still decrypt in the sinks, so configurations
stored before v2 keep delivering; a command that carries one is refused (`allow_v1=False`),
so no new v1 envelope enters the settings and an old one cannot be moved. Re-putting a
configuration with the CLI re-encrypts it as v2.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REDACTED = "***"
_AAD_V1 = b"streamer-secret-v1"


class SecretError(ValueError):
    pass


def _aad(scope: str, field: str) -> bytes:
    return f"streamer-secret-v2|{scope}|{field}".encode()


def scope_of_destination(destination_id: str) -> str:
    """`workspace:7` -> `ws/7`, `partner:P` -> `partner/P` (delivery keys to settings scopes)."""
    scope, _, ident = destination_id.partition(":")
    return f"ws/{ident}" if scope == "workspace" else f"{scope}/{ident}"


def encrypt(plaintext: str, keys: dict[str, bytes], scope: str, field: str) -> str:
    if not keys:
        raise SecretError("no encryption key configured (STREAMER_ENCRYPTION_KEYS)")
    key_id, key = next(iter(keys.items()))
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _aad(scope, field))
    return f"v2:{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt(envelope: str, keys: dict[str, bytes], scope: str, field: str, allow_v1: bool = True) -> str:
    try:
        version, key_id, payload = envelope.split(":", 2)
    except ValueError:
        raise SecretError("secret is not an encrypted envelope") from None
    if version == "v1" and allow_v1:
        aad = _AAD_V1
    elif version == "v1":
        raise SecretError(f"secret {field} is a v1 envelope, not bound to its scope; "
                          f"re-encrypt it with this version of the CLI")
    elif version == "v2":
        aad = _aad(scope, field)
    else:
        raise SecretError(f"unknown secret envelope version {version[:16]!r}")
    if key_id not in keys:
        raise SecretError(f"secret was encrypted with unknown key id {key_id[:64]!r}")
    try:
        raw = base64.urlsafe_b64decode(payload)
        return AESGCM(keys[key_id]).decrypt(raw[:12], raw[12:], aad).decode()
    except Exception:
        raise SecretError(f"secret {field} does not decrypt with key id {key_id!r} for {scope} "
                          f"(wrong key, or encrypted for another destination or field)") from None


def redact(value: Any) -> Any:
    """Replace every encrypted envelope (and its plaintext, if present) with `***`."""
    if isinstance(value, dict):
        if set(value) == {"enc"}:
            return REDACTED
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def find_envelopes(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(field path, envelope) of every envelope: `destination.api_key`, `destination.secret_headers.X`."""
    if isinstance(value, dict):
        if set(value) == {"enc"}:
            return [(path, value["enc"])]
        return [e for k, v in value.items() for e in find_envelopes(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in find_envelopes(v, f"{path}.{i}")]
    return []


def redact_text(text: str, secrets: list[str]) -> str:
    """`text` with every secret in it replaced by `***`, also as it appears JSON-escaped or
    URL-encoded (how a destination echoing a request would show it). Longest first, so a
    secret containing another is replaced whole."""
    from urllib.parse import quote

    import orjson

    forms = set()
    for s in secrets:
        if s:
            forms.update((s, orjson.dumps(s).decode()[1:-1], quote(s, safe="")))
    for form in sorted(forms, key=len, reverse=True):
        if form in text:
            text = text.replace(form, REDACTED)
    return text

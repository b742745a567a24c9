"""Azure Blob Storage: which credential a destination uses, and what an error means. Pure.

The blob name is the delivery's object key (streamer/keys.py, the S3 layout of spec 4.1),
so a re-delivered event overwrites its own blob: idempotent, as S3 keys are.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from streamer.sinks.base import DELIVERED, Outcome

CONTENT_TYPE = "application/json"
WRITE_CHECK = "azure_blob Put Blob"
PROBE_CHECK = "azure_blob Get Container Properties"

# Error codes no retry will fix: the configuration is wrong.
FATAL_CODES = frozenset({"ContainerNotFound", "AuthenticationFailed", "AuthorizationFailure",
                         "AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch",
                         "AuthorizationProtocolMismatch", "AuthorizationSourceIPMismatch",
                         "InvalidResourceName", "AccountIsDisabled", "InsufficientAccountPermissions",
                         "InvalidAuthenticationInfo", "NoAuthenticationInformation"})
RETRY_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})


@dataclass(frozen=True, slots=True)
class Credential:
    kind: str  # key | sas | default
    account_name: str = ""
    secret: str = ""  # the account key or the SAS token (without a leading '?')


def parse_connection_string(text: str) -> dict[str, str]:
    """`Name=value;Name=value` as Azure writes it; values may contain '=' (base64 keys)."""
    out: dict[str, str] = {}
    for part in text.strip().split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError("connection string parts must be Name=value")
        out[name.strip()] = value.strip()
    return out


def account_name_from_url(account_url: str) -> str:
    """The storage account an URL names: the first label of `<account>.blob.core.windows.net`,
    or the first path segment for an IP or localhost endpoint (Azurite, `http://host:port/<account>`)."""
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        path_style = True
    except ValueError:
        path_style = host == "localhost"
    if path_style:
        return parts.path.strip("/").split("/", 1)[0]
    return host.split(".", 1)[0]


def credential(dest: dict, decrypt: Callable[[str, str], str]) -> Credential:
    """The destination's credential; `decrypt(envelope, field)` opens an encrypted envelope
    (bound to its field, see streamer/settings/secrets.py)."""
    name = dest.get("account_name") or account_name_from_url(dest["account_url"])
    if dest.get("account_key"):
        return Credential("key", name, decrypt(dest["account_key"]["enc"], "destination.account_key"))
    if dest.get("sas_token"):
        return Credential("sas", name, decrypt(dest["sas_token"]["enc"], "destination.sas_token").lstrip("?"))
    if dest.get("connection_string"):
        parts = parse_connection_string(decrypt(dest["connection_string"]["enc"], "destination.connection_string"))
        if parts.get("AccountKey"):
            return Credential("key", parts.get("AccountName") or name, parts["AccountKey"])
        if parts.get("SharedAccessSignature"):
            return Credential("sas", name, parts["SharedAccessSignature"].lstrip("?"))
        raise ValueError("connection string has neither AccountKey nor SharedAccessSignature")
    return Credential("default", name)


def check_destination(dest: dict, decrypt: Callable[[str, str], str]) -> str | None:
    """Why a destination cannot work, or None: at most one credential, and a connection
    string that carries one."""
    given = [f for f in ("account_key", "sas_token", "connection_string") if dest.get(f)]
    if len(given) > 1:
        return f"azure_blob takes one credential, got {', '.join(given)}"
    try:
        credential(dest, decrypt)
    except ValueError as e:
        return f"azure_blob {e}"
    return None


def classify(status: int | None, code: str | None, message: str = "", retry_after: float | None = None) -> Outcome:
    """The outcome of a Put Blob: a code in FATAL_CODES never retries; otherwise 5xx, 408,
    429, no status (the request never got an answer) and the busy codes do; any other 4xx
    is permanent."""
    status = status or 0
    if 200 <= status < 300:
        return DELIVERED
    code = code or ""
    retryable = code not in FATAL_CODES and (status >= 500 or status in (0, 408, 429) or code in RETRY_CODES)
    return Outcome(False, retryable, f"azure_blob {code or status}: {message}"[:300], retry_after, status or None)

"""What a REST destination sends to authenticate, from its configuration and decrypted secrets.
No I/O: the OAuth2 token itself is fetched by the sink (streamer/sinks/oauth/service.py).

Each secret is decrypted bound to its scope and field (`destination.auth.password`, ...), and
every plaintext is returned with the headers, so the sink can redact it from error texts in
every form a server may echo it: whole, as a header value, or as the token alone.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from streamer.settings.secrets import decrypt
from streamer.sinks.oauth.request import token_request


@dataclass(frozen=True, slots=True)
class OAuth2:
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None
    client_auth: str  # basic | body

    def token_request(self) -> tuple[bytes, dict[str, str]]:
        return token_request(self.client_id, self.client_secret, self.scope, self.client_auth)


@dataclass(frozen=True, slots=True)
class Credentials:
    url: str  # decrypted when it was encrypted (a Sumo Logic source URL carries its token)
    headers: dict[str, str]  # plain headers and decrypted secret headers, auth included
    secrets: list[str]  # every decrypted secret, for redaction
    oauth2: OAuth2 | None = None  # the bearer token is fetched per request
    client_key: str | None = None  # PEM, for the destination's TLS client certificate


def credentials(dest: dict[str, Any], keys: dict[str, bytes], scope: str) -> Credentials:
    def secret(envelope: dict[str, str], field: str) -> str:
        plain = decrypt(envelope["enc"], keys, scope, f"destination.{field}")
        secrets.append(plain)
        return plain

    secrets: list[str] = []
    url = dest["url"]
    if isinstance(url, dict) or dest.get("provider") == "sumo":  # a plain one: stored before it was a secret
        url = secret(url, "url") if isinstance(url, dict) else url
        # An error text may carry the path or the token alone (the last segment of the path).
        path = urlsplit(url).path
        secrets += [p for p in (url, path, path.rstrip("/").rsplit("/", 1)[-1]) if len(p) >= 8]
    headers = dict(dest.get("headers") or {})
    for name, env in (dest.get("secret_headers") or {}).items():
        headers[name] = secret(env, f"secret_headers.{name}")
    if dest.get("provider") == "datadog" and dest.get("api_key"):
        headers["DD-API-KEY"] = secret(dest["api_key"], "api_key")
    if dest.get("provider") == "splunk" and dest.get("token"):
        headers["Authorization"] = "Splunk " + secret(dest["token"], "token")
    auth = dest.get("auth") or {"type": "none"}
    oauth2 = None
    if auth["type"] == "basic":
        pair = f"{auth['username']}:{secret(auth['password'], 'auth.password')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        secrets.append(headers["Authorization"])
    elif auth["type"] == "api_key":
        headers[auth["header"]] = secret(auth["value"], "auth.value")
    elif auth["type"] == "bearer":
        headers["Authorization"] = "Bearer " + secret(auth["token"], "auth.token")
    elif auth["type"] == "oauth2_client_credentials":
        oauth2 = OAuth2(auth["token_url"], auth["client_id"], secret(auth["client_secret"], "auth.client_secret"),
                        auth.get("scope"), auth.get("client_auth") or "basic")
    # A secret header like "Bearer <token>" may be echoed as the token alone.
    secrets += [part for s in list(secrets) for part in s.split() if len(part) >= 8 and part != s]
    tls = dest.get("tls") or {}
    client_key = secret(tls["client_key"], "tls.client_key") if tls.get("client_key") else None  # whole only
    return Credentials(url, headers, secrets, oauth2, client_key)

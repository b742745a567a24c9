"""The OAuth2 client-credentials grant (RFC 6749 4.4) without I/O: the token request, reading
the answer, and when to renew. Shared by the REST sink's `oauth2_client_credentials` auth and
Azure Monitor's Entra app registrations."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus, urlencode

import orjson

REFRESH_MARGIN_S = 300.0  # a token is renewed this long before it expires...
DEFAULT_LIFETIME_S = 3600.0  # ...and one without `expires_in` after this long (or on a 401)


def token_request(client_id: str, client_secret: str, scope: str | None = None,
                  client_auth: str = "body") -> tuple[bytes, dict[str, str]]:
    """(form body, headers). `client_auth` "basic": the credentials in an HTTP Basic header,
    each form-urlencoded first (RFC 6749 2.3.1); "body": in the form."""
    form = {"grant_type": "client_credentials"}
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if client_auth == "basic":
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    else:
        form.update(client_id=client_id, client_secret=client_secret)
    if scope:
        form["scope"] = scope
    return urlencode(form).encode(), headers


def parse_token(body: bytes) -> tuple[str, float | None]:
    """(access token, lifetime in seconds or None) from a 200 answer; ValueError if it is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("token answer is not JSON") from None
    token = parsed.get("access_token") if isinstance(parsed, dict) else None
    if not isinstance(token, str) or not token:
        raise ValueError("token answer has no access_token")
    kind = parsed.get("token_type")
    if isinstance(kind, str) and kind.lower() != "bearer":
        raise ValueError(f"token answer has token_type {kind[:32]!r}, not Bearer")
    lifetime = parsed.get("expires_in")
    try:
        return token, float(lifetime) if lifetime is not None else None
    except (TypeError, ValueError):
        return token, None


def renew_at(lifetime: float | None, now: float) -> float:
    """When to renew a token (monotonic seconds): the margin before it expires, or half way
    for a token that lives less than twice the margin (so a short-lived token is not fetched
    for every request)."""
    life = DEFAULT_LIFETIME_S if lifetime is None else max(0.0, lifetime)
    return now + max(life - REFRESH_MARGIN_S, life / 2)

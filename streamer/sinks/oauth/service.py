"""OAuth2 tokens, cached: one per key (a destination's token URL and client), fetched once
however many requests wait for it, renewed before it expires, and renewed early when a
destination answers 401 to it (a revoked token).

Renewed early only when that can help: a token a destination has accepted before (so it
was revoked since), or one older than a minute. A destination that refuses every token
(a wrong audience or scope) would otherwise cost the identity provider one token request
per event, and it may throttle or lock the client for that.

A refusal by the token endpoint (4xx) is the configuration's fault (a wrong secret or
client): never retried; its 408, 429 and 5xx and network errors are.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from streamer.sinks.base import Outcome
from streamer.sinks.http.request import retry_after_seconds
from streamer.sinks.oauth.request import parse_token, renew_at


class TokenError(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class TokenRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    label: str  # names the token in error texts: "oauth2 token", "azure_monitor token"
    options: dict[str, Any] = field(default_factory=dict)  # for session.post: proxy, proxy_auth, ssl


@dataclass(slots=True)
class _Token:
    lock: asyncio.Lock
    value: str = ""
    renew_at: float = 0.0
    fetched_at: float = 0.0
    accepted: bool = False  # a destination took a request with it


class TokenCache:
    UNPROVEN_RENEWAL_S = 60.0  # a token never accepted is renewed on a 401 at most this often

    def __init__(self, max_tokens: int = 2_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: OrderedDict[bytes, _Token] = OrderedDict()
        self._max = max_tokens
        self._clock = clock
        self.fetches = 0  # tokens fetched, for tests and the curious

    async def get(self, session: aiohttp.ClientSession, key: bytes, request: Callable[[], TokenRequest]) -> str:
        """A valid token for `key`: the cached one, else one fetched with `request()` (built
        only then, so a secret is decrypted only when it is needed). Raises TokenError."""
        token = self._tokens.get(key)
        if token is None:
            token = self._tokens[key] = _Token(asyncio.Lock())
            if len(self._tokens) > self._max:
                self._tokens.popitem(last=False)
        else:
            self._tokens.move_to_end(key)
        if token.value and self._clock() < token.renew_at:
            return token.value
        async with token.lock:
            if token.value and self._clock() < token.renew_at:
                return token.value
            value, lifetime = await self._fetch(session, request())
            now = self._clock()
            token.value, token.renew_at, token.fetched_at, token.accepted = value, renew_at(lifetime, now), now, False
            return value

    def accepted(self, key: bytes, value: str) -> None:
        """A destination took a request with `value`."""
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            token.accepted = True

    def invalidate(self, key: bytes, value: str) -> bool:
        """A destination refused `value`: True when a new token is worth asking for (the next
        `get` fetches it), False when it would be refused too (see the module docstring). A
        token already replaced is left alone, so many requests refused at once fetch once."""
        token = self._tokens.get(key)
        if token is None or token.value != value:
            return True
        if token.accepted or self._clock() - token.fetched_at >= self.UNPROVEN_RENEWAL_S:
            token.renew_at = 0.0
            return True
        return False

    async def _fetch(self, session: aiohttp.ClientSession, req: TokenRequest) -> tuple[str, float | None]:
        self.fetches += 1
        try:
            async with session.post(req.url, data=req.body, headers=req.headers, allow_redirects=False,
                                    **req.options) as resp:
                body = await resp.read()
                if resp.status != 200:
                    error = f"{req.label} HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}"
                    retryable = resp.status >= 500 or resp.status in (408, 429)
                    raise TokenError(Outcome(False, retryable, error[:300],
                                             retry_after_seconds(resp.headers.get("Retry-After")), resp.status))
                return parse_token(body)
        except ValueError as e:  # an answer that is not a token: a glitch, or a wrong token_url
            raise TokenError(Outcome(False, True, f"{req.label}: {e}"[:300])) from e
        except asyncio.TimeoutError as e:
            raise TokenError(Outcome(False, True, f"{req.label} timed out")) from e
        except (aiohttp.ClientError, OSError) as e:
            raise TokenError(Outcome(False, True, f"{req.label}: {type(e).__name__}: {e}"[:300])) from e

    def clear(self) -> None:
        self._tokens.clear()

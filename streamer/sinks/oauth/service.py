"""OAuth2 tokens, cached: one per key (a destination's token URL and client), fetched once
however many requests wait for it, renewed before it expires, and renewed early when a
destination answers 401 to it (a revoked token).

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


class TokenCache:
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
            token.value, token.renew_at = value, renew_at(lifetime, self._clock())
            return value

    def invalidate(self, key: bytes, value: str) -> None:
        """Forget `value` (a destination refused it): the next `get` fetches a new one. A token
        already replaced is left alone, so many requests refused at once fetch only once."""
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            token.renew_at = 0.0

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
                                             retry_after_seconds(resp.headers.get("Retry-After"))))
                return parse_token(body)
        except ValueError as e:  # an answer that is not a token: a glitch, or a wrong token_url
            raise TokenError(Outcome(False, True, f"{req.label}: {e}"[:300])) from e
        except asyncio.TimeoutError as e:
            raise TokenError(Outcome(False, True, f"{req.label} timed out")) from e
        except (aiohttp.ClientError, OSError) as e:
            raise TokenError(Outcome(False, True, f"{req.label}: {type(e).__name__}: {e}"[:300])) from e

    def clear(self) -> None:
        self._tokens.clear()

"""A lean HTTP/1.1 keep-alive client for the sinks' hot path: one request, one response.

Why not aiohttp here: with thousands of small tenants a REST request carries 1.7 events on
average, so what one request costs the client is what an event costs. aiohttp's
`session.post` costs 130-160 µs of client CPU per request on this project's machine (its
request and response objects, payload registry, tracing hooks, timers, cookie and redirect
machinery); the whole HTTP sink's request on this transport, a POST written straight to an
asyncio transport and parsed with `httptools` (llhttp, the parser uvicorn uses), costs about
70 µs (`python -m streamer.benchmark httppost`; docs/performance.md, Seventh round).
The sinks still use aiohttp for everything this module does not do: proxies, OAuth token
requests, probes, URLs with credentials in them.

What it keeps from aiohttp's pool, because the sinks rely on it:
- connections are pooled per (scheme, host, port, TLS context): a destination with its own
  CAs or client certificate never sends on another's connection;
- names are resolved by the resolver given (the SSRF guard's `PublicOnlyResolver` refuses
  answers that are not globally routable), and cached for `DNS_TTL_S`, as `ttl_dns_cache`;
- a connection idle for `IDLE_S` is not reused (aiohttp's `keepalive_timeout`), and none is
  reused after the server asked to close or a response was not read to its end;
- a connect timeout and a total timeout raise `asyncio.TimeoutError`; every network or
  protocol failure raises an `OSError` (`ConnectionError` or `ProtocolError`), so the sinks'
  classification (timed out / network error, both retryable) is unchanged.

What it adds: a response body is read up to `MAX_RESPONSE_BYTES` and no further (the URL is
a tenant's: its server must not fill the worker's memory); and a request that fails on a
reused connection before any byte of the answer arrived (the server closed it while idle)
is sent once more on a new connection, as browsers do: at-least-once allows it, and
providers de-duplicate by the Idempotency-Key header.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import httptools
from yarl import URL

DNS_TTL_S = 60.0
IDLE_S = 15.0
MAX_RESPONSE_BYTES = 1024 * 1024
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.1 this client can read."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    retry_after: str | None


def usable(url: str, headers: dict[str, str]) -> bool:
    """Whether `request` sends this as aiohttp would; else the sink uses aiohttp. URLs with
    user info (aiohttp turns it into Basic auth) and configured headers this client writes
    itself go the general way."""
    try:
        u = URL(url)
    except ValueError:
        return False
    if u.scheme not in ("http", "https") or not u.raw_host or u.raw_user or u.raw_password:
        return False
    return not any(name.lower() in _FORBIDDEN_HEADERS for name in headers)


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (no pipelining)."""

    __slots__ = ("transport", "parser", "waiter", "status", "body", "size", "retry_after", "framed",
                 "headers_done", "closed", "idle_since", "got_bytes", "complete")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.retry_after: str | None = None
        self.framed = False  # Content-Length or chunked: else the body ends with the connection
        self.headers_done = False
        self.got_bytes = False
        self.complete = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the server switched protocols"))
        except httptools.HttpParserError as e:
            self._fail(ProtocolError(f"malformed HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.headers_done and not self.framed and not self.complete:
            # httptools has no end-of-input call: a body that runs to the connection's end
            # (HTTP/1.0, or no Content-Length) is complete here.
            self.complete = True
            self._done()
            return
        self._fail(ConnectionResetError("the server closed the connection before the response was complete")
                   if exc is None else exc if isinstance(exc, OSError) else ConnectionError(str(exc)))

    # -- httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif name in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        # No body follows these whatever the headers say.
        self.headers_done = True
        if status == 204 or status == 304 or 100 <= status < 200:
            self.framed = True

    def on_body(self, chunk: bytes) -> None:
        if self.size < MAX_RESPONSE_BYTES:
            room = MAX_RESPONSE_BYTES - self.size
            self.body.append(chunk[:room])
        self.size += len(chunk)
        if self.size > MAX_RESPONSE_BYTES:
            # Enough for any error text or acknowledgement: the rest is not read.
            self.complete = True
            self.closed = True
            self._done()
            self.transport.close()

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset()
            self.got_bytes = True
            return
        self.status = status
        self.complete = True
        if not self.parser.should_keep_alive():
            self.closed = True
        self._done()

    # --
    def _done(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.status, b"".join(self.body), self.retry_after))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self) -> None:
        self._fail(asyncio.TimeoutError())

    async def exchange(self, head: bytes, body: bytes, deadline: float | None) -> Response:
        """One request and its response; a timer (cheaper than `asyncio.timeout`, which cost
        5% of an S3 worker's samples) fails it at `deadline`, the loop's clock."""
        self._reset()
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, self._timed_out)
        try:
            if len(body) < 64 * 1024:
                self.transport.write(head + body)
            else:
                self.transport.writelines((head, body))
            return await self.waiter
        finally:
            if timer is not None:
                timer.cancel()


@dataclass(slots=True, frozen=True)
class _Key:
    scheme: str
    host: str
    port: int
    ssl: Any  # None (http), or the SSLContext object: pooled per context, as aiohttp does


class Pool:
    """Keep-alive connections by (scheme, host, port, TLS context); unlimited, like the
    sinks' aiohttp connectors (`limit=0`): the sinks' per-destination limits bound them."""

    def __init__(self, resolver: Any, connect_timeout_s: float, total_timeout_s: float | None,
                 user_agent: str = "streamer/0.1") -> None:
        self._resolver = resolver  # an aiohttp AbstractResolver
        self._connect_timeout = connect_timeout_s
        self._total_timeout = total_timeout_s
        self._user_agent = user_agent
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._next_sweep = 0.0
        self._urls: dict[tuple[str, Any], tuple[_Key, str, str]] = {}

    def _parse(self, url: str, tls: Any, encoded: bool) -> tuple[_Key, str, str]:
        if encoded:
            # An object's URL, new every time: its origin is what repeats, and the path goes
            # as given. Only plain ASCII URLs are taken apart by hand; yarl parses the rest.
            cut = url.find("/", url.find("//") + 2)
            if cut > 0 and url.isascii() and "@" not in url[:cut] and "?" not in url[:cut]:
                origin = self._parse(url[:cut], tls, False)
                return origin[0], url[cut:], origin[2]
        cached = None if encoded else self._urls.get((url, tls))
        if cached is not None:
            return cached
        u = URL(url, encoded=encoded)
        secure = u.scheme == "https"
        context = tls
        if secure and (tls is None or tls is True):
            if self._default_tls is None:
                self._default_tls = ssl.create_default_context()
            context = self._default_tls
        host = u.raw_host
        authority = f"[{host}]" if ":" in host else host
        if not u.is_default_port():
            authority = f"{authority}:{u.port}"
        key = _Key(u.scheme, host, u.port, context if secure else None)
        parsed = (key, u.raw_path_qs or "/", authority)
        if not encoded:  # a destination's URL, used again and again (not an object's)
            if len(self._urls) > 20_000:
                self._urls.clear()
            self._urls[(url, tls)] = parsed
        return parsed

    def authority(self, url: str, tls: Any = None, encoded: bool = False) -> str:
        """The Host header `request` sends for `url`: what a signature over the host must sign."""
        return self._parse(url, tls, encoded)[2]

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes,
                      tls: Any = None, encoded: bool = False) -> Response:
        """Send one request, read its response. `tls`: an SSLContext for an https URL (None
        or True: the system's CAs). Raises asyncio.TimeoutError or OSError (ValueError for a
        header with CR, LF or NUL). Not for HEAD: its answer's length is not its body's.
        `encoded`: the URL's path is sent exactly as given (a signed S3 key), not re-quoted."""
        key, target, authority = self._parse(url, tls, encoded)
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
        user_agent = content_type = False
        for name, value in headers.items():
            if _unsafe(name) or _unsafe(value):  # header injection: refused, as aiohttp does
                raise ValueError(f"header {name[:40]!r} contains CR, LF or NUL")
            lowered = name.lower()
            user_agent = user_agent or lowered == "user-agent"
            content_type = content_type or lowered == "content-type"
            lines.append(f"{name}: {value}\r\n")
        if not user_agent:
            lines.append(f"User-Agent: {self._user_agent}\r\n")
        if not content_type:
            lines.append("Content-Type: application/octet-stream\r\n")  # aiohttp's for bytes
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines).encode()  # UTF-8, as aiohttp writes headers
        loop = asyncio.get_running_loop()
        deadline = None if self._total_timeout is None else loop.time() + self._total_timeout
        conn, reused = await self._acquire(key, deadline)
        try:
            try:
                response = await conn.exchange(head, body, deadline)
            except ConnectionError:  # not a timeout: that is not sent again
                if not reused or conn.got_bytes:
                    raise
                # The server closed the idle connection as the request went: once more, anew.
                conn = await self._connect(key, deadline)
                response = await conn.exchange(head, body, deadline)
        except BaseException:  # timed out, cancelled or failed: the connection is not reused
            conn.closed = True
            conn.transport.close()
            raise
        self._release(key, conn)
        return response

    async def _acquire(self, key: _Key, deadline: float | None) -> tuple[_Connection, bool]:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed by now
            if conn.closed or now - conn.idle_since > IDLE_S or conn.transport.is_closing():
                conn.transport.close()
                continue
            return conn, True
        return await self._connect(key, deadline), False

    def _release(self, key: _Key, conn: _Connection) -> None:
        if conn.closed or not conn.complete:
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, deque()).append(conn)

    async def _connect(self, key: _Key, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        until = loop.time() + self._connect_timeout
        async with asyncio.timeout_at(until if deadline is None else min(until, deadline)):
            for address in await self._resolve(key.host, key.port):
                try:
                    _, conn = await loop.create_connection(
                        _Connection, address, key.port, ssl=key.ssl,
                        server_hostname=key.host if key.ssl is not None else None)
                    return conn
                except OSError as e:
                    last = e
        raise last or ConnectionError(f"cannot connect to {key.host}:{key.port}")

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return [host]  # an IP literal: the sink's literal check has decided on it
        except OSError:
            pass
        now = time.monotonic()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        answers = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        addresses = list(dict.fromkeys(a["host"] for a in answers))
        if len(self._addresses) > 20_000:
            self._addresses.clear()
        self._addresses[(host, port)] = (now + DNS_TTL_S, addresses)
        return addresses

    def _sweep(self, now: float) -> None:
        """Close connections idle too long, so a worker that once spoke to thousands of
        hosts does not hold their sockets."""
        self._next_sweep = now + IDLE_S / 3
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and (idle[0].closed or now - idle[0].idle_since > IDLE_S):
                idle.popleft().transport.close()
            if not idle:
                del self._idle[key]

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.transport.close()
        self._idle.clear()
        self._addresses.clear()
        self._urls.clear()

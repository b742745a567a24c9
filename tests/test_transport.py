"""The sinks' lean HTTP/1.1 transport (streamer/sinks/transport.py) against real loopback
servers that write exact bytes: keep-alive reuse, a connection the server closed while idle,
bodies framed every way HTTP/1.1 allows, the response cap, timeouts, header injection and
the SSRF resolver."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.resolver import DefaultResolver
from yarl import URL

from streamer.sinks import transport
from streamer.sinks.http.service import PublicOnlyResolver
from streamer.sinks.transport import Pool, usable


class Server:
    """Reads one request at a time (head, then Content-Length bytes) and answers with
    whatever `answer(n)` returns for the n-th request; counts connections."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "Server":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/logs?x=1"
        return self

    async def __aexit__(self, *exc) -> None:
        for w in self.writers:
            w.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answer(len(self.requests))
                if answer is None:
                    return  # hang: never answer
                close = answer.endswith(b"CLOSE")
                writer.write(answer.removesuffix(b"CLOSE"))
                await writer.drain()
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


def ok(body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def pool(**kw) -> Pool:
    return Pool(DefaultResolver(), connect_timeout_s=kw.get("connect", 2), total_timeout_s=kw.get("total", 2))


async def test_requests_share_a_kept_alive_connection_and_carry_what_aiohttp_would_send():
    async with Server(lambda n: ok(b'{"n":%d}' % n)) as s:
        p = pool()
        first = await p.request("POST", s.url, {"DD-API-KEY": "k", "Content-Type": "application/json"}, b"[1]")
        second = await p.request("POST", s.url, {}, b"[22]")
        p.close()
    assert (first.status, first.body, second.body) == (200, b'{"n":1}', b'{"n":2}')
    assert s.connections == 1
    head = s.requests[0].decode()
    assert head.startswith("POST /logs?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{s.url.split(':')[2].split('/')[0]}\r\n" in head
    assert "User-Agent: streamer/0.1\r\n" in head and "DD-API-KEY: k\r\n" in head
    assert head.endswith("Content-Length: 3\r\n\r\n[1]")
    assert "Content-Type: application/octet-stream" in s.requests[1].decode()  # aiohttp's for bytes


async def test_a_connection_the_server_closed_while_idle_is_dropped():
    async with Server(lambda n: ok()) as s:
        p = pool()
        await p.request("POST", s.url, {}, b"a")
        for w in s.writers:  # the server drops the idle connection without a word
            w.transport.abort()
        await asyncio.sleep(0.05)
        r = await p.request("POST", s.url, {}, b"b")
        p.close()
    assert r.status == 200 and s.connections == 2 and len(s.requests) == 2


async def test_a_request_lost_on_a_reused_connection_before_any_answer_is_sent_once_more_anew():
    # The server takes the second request on the kept-alive connection and closes it unanswered,
    # as one that times out idle connections does when a request crosses the close.
    async with Server(lambda n: b"CLOSE" if n == 2 else ok()) as s:
        p = pool()
        await p.request("POST", s.url, {}, b"a")
        r = await p.request("POST", s.url, {}, b"b")
        p.close()
    assert r.status == 200 and s.connections == 2 and len(s.requests) == 3


async def test_a_request_that_fails_on_a_new_connection_is_not_sent_again():
    async with Server(lambda n: b"CLOSE") as s:
        p = pool()
        with pytest.raises(ConnectionError):
            await p.request("POST", s.url, {}, b"a")
        p.close()
    assert len(s.requests) == 1


@pytest.mark.parametrize("answer, body", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    (b"HTTP/1.0 200 OK\r\n\r\nto the endCLOSE", b"to the end"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
])
async def test_every_way_a_response_body_is_framed(answer, body):
    async with Server(lambda n: answer) as s:
        p = pool()
        r = await p.request("POST", s.url, {}, b"x")
        again = await p.request("POST", s.url, {}, b"y")
        p.close()
    assert r.body == body and again.body == body and r.status in (200, 202, 204)


async def test_retry_after_is_read_and_a_close_asked_for_is_honoured():
    async with Server(lambda n: ok(b"slow down", b"Retry-After: 7\r\nConnection: close\r\n")) as s:
        p = pool()
        r = await p.request("POST", s.url, {}, b"x")
        await p.request("POST", s.url, {}, b"y")
        p.close()
    assert (r.status, r.retry_after, r.body) == (200, "7", b"slow down")
    assert s.connections == 2


async def test_a_response_body_is_read_up_to_the_cap_and_its_connection_not_reused(monkeypatch):
    monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 1000)
    async with Server(lambda n: ok(b"x" * 5000)) as s:
        p = pool()
        r = await p.request("POST", s.url, {}, b"x")
        await p.request("POST", s.url, {}, b"y")
        p.close()
    assert r.body == b"x" * 1000 and s.connections == 2


async def test_a_server_that_does_not_answer_times_out_and_its_connection_is_dropped():
    async with Server(lambda n: None if n == 1 else ok()) as s:
        p = pool(total=0.3)
        with pytest.raises(asyncio.TimeoutError):
            await p.request("POST", s.url, {}, b"x")
        r = await p.request("POST", s.url, {}, b"y")
        p.close()
    assert r.status == 200 and s.connections == 2


async def test_malformed_answers_are_network_errors():
    async with Server(lambda n: b"NOT HTTP AT ALL\r\n\r\n") as s:
        p = pool()
        with pytest.raises(OSError):
            await p.request("POST", s.url, {}, b"x")
        p.close()


async def test_header_injection_is_refused_before_anything_is_sent():
    async with Server(lambda n: ok()) as s:
        p = pool()
        with pytest.raises(ValueError):
            await p.request("POST", s.url, {"X-Token": "a\r\nX-Admin: yes"}, b"x")
        p.close()
    assert s.requests == []


async def test_names_resolve_through_the_ssrf_resolver():
    async with Server(lambda n: ok()) as s:
        p = Pool(PublicOnlyResolver(), 2, 2)
        with pytest.raises(OSError, match="not globally routable"):
            await p.request("POST", s.url.replace("127.0.0.1", "localhost"), {}, b"x")
        p.close()
        p = pool()
        assert (await p.request("POST", s.url.replace("127.0.0.1", "localhost"), {}, b"x")).status == 200
        p.close()


def test_what_the_lean_transport_leaves_to_aiohttp():
    assert usable("https://http-intake.logs.datadoghq.com/api/v2/logs", {"DD-API-KEY": "k"})
    assert not usable("https://user:pw@example.com/", {})  # aiohttp makes Basic auth of it
    assert not usable("ftp://example.com/", {})
    assert not usable("https://example.com/", {"Host": "other.example"})


@pytest.mark.parametrize("url", ["https://b.s3.us-east-1.amazonaws.com/a/b%20c~d.json",
                                 "http://127.0.0.1:9000/bucket/x%2Fy?versionId=1", "https://[::1]:8443/b/k",
                                 "https://s3.eu-west-1.amazonaws.com/b/2026%2B/%C3%A9.json"])
def test_an_object_url_taken_apart_by_hand_is_what_yarl_makes_of_it(url):
    p = Pool(None, 1, 1)
    key, target, authority = p._parse(url, None, True)
    u = URL(url, encoded=True)
    assert (target, key.host, key.port) == (u.raw_path_qs, u.raw_host, u.port)
    assert authority == u.raw_authority


async def test_a_timeout_on_a_reused_connection_is_not_sent_again():
    async with Server(lambda n: ok() if n == 1 else None) as s:
        p = pool(total=0.3)
        await p.request("POST", s.url, {}, b"a")
        with pytest.raises(asyncio.TimeoutError):
            await p.request("POST", s.url, {}, b"b")
        p.close()
    assert len(s.requests) == 2 and s.connections == 1

"""REST destination options (issue 14): auth types, the Sumo Logic URL as a secret, TLS per
destination, proxies. The rules and request building without I/O, then the sink against
real servers on loopback (tests/providers.py, tests/tls_proxy.py), no broker. Through the
broker and a worker: tests/test_rest_options_e2e.py.
"""

from __future__ import annotations

import base64
import urllib.parse
from datetime import datetime, timezone

import aiohttp
import orjson
import pytest

from streamer.admin import build_command, encrypt_secrets, local_check
from streamer.settings import secrets
from streamer.settings.model import Configuration
from streamer.settings.rules import Policy, decide
from streamer.settings.state import SettingsState
from streamer.settings.urls import urls_in
from streamer.sinks.base import Delivery
from streamer.sinks.http.auth import credentials
from streamer.sinks.http.service import HttpSink
from streamer.sinks.oauth.request import parse_token, renew_at, token_request
from streamer.sinks.oauth.service import TokenCache, TokenRequest
from tests.providers import OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPE, Fault, ProviderServer
from tests.tls_proxy import Authority, ForwardProxy, server_context

SIGN = b"s" * 32
ENC = {"e1": b"e" * 32}
POLICY = Policy({"k1": SIGN}, ENC, allow_private_destinations=False, command_max_age_s=300)
LOOSE = Policy({"k1": SIGN}, ENC, allow_private_destinations=True, command_max_age_s=300)
NOW = datetime(2026, 3, 14, 12, 0, tzinfo=timezone.utc)
PUBLIC = "https://93.184.215.14/x"
SUMO_URL = "https://endpoint4.collection.sumologic.com/receiver/v1/http/ZaVnC4dhaV2-sumo-token-1f0e"


def dest(**over) -> dict:
    return {"type": "http", "provider": "generic", "url": PUBLIC, **over}


def check(destination: dict, policy: Policy = POLICY, scope: str = "ws/7") -> str | None:
    """The CLI's (and the worker's) verdict on a configuration, encrypted as the CLI does."""
    config = encrypt_secrets({"jobs": "status", "destination": destination}, ENC, scope)
    command = build_command("put_workspace_config", {"workspace_id": scope.split("/")[1], "config": config},
                            "admin", "k1", SIGN, issued_at=NOW)
    return local_check(command, policy)


# -- configuration ---------------------------------------------------------------------------------

def test_the_cli_encrypts_every_new_secret_bound_to_its_field_and_settings_get_shows_stars():
    plain = {"jobs": "status", "destination": dest(
        provider="sumo", url=SUMO_URL,
        auth={"type": "oauth2_client_credentials", "token_url": "https://93.184.215.14/token", "client_id": "cid",
              "client_secret": "cs-1"},
        tls={"ca_bundle": "CA", "client_cert": "CERT", "client_key": "KEY-1"})}
    config = encrypt_secrets(plain, ENC, "ws/7")
    d = config["destination"]
    assert {k: set(v) for k, v in (("url", d["url"]), ("cs", d["auth"]["client_secret"]),
                                   ("key", d["tls"]["client_key"]))} == {"url": {"enc"}, "cs": {"enc"}, "key": {"enc"}}
    assert secrets.decrypt(d["url"]["enc"], ENC, "ws/7", "destination.url") == SUMO_URL
    assert secrets.decrypt(d["tls"]["client_key"]["enc"], ENC, "ws/7", "destination.tls.client_key") == "KEY-1"
    with pytest.raises(secrets.SecretError):  # bound to its field: not usable as another
        secrets.decrypt(d["auth"]["client_secret"]["enc"], ENC, "ws/7", "destination.client_secret")
    assert d["auth"]["client_id"] == "cid" and d["tls"]["client_cert"] == "CERT"  # not secrets
    shown = secrets.redact(Configuration.model_validate(config).model_dump(mode="json"))["destination"]
    assert shown["url"] == shown["auth"]["client_secret"] == shown["tls"]["client_key"] == "***"
    for kind, field, value in (("basic", "password", "pw-1"), ("api_key", "value", "k-1"), ("bearer", "token", "t-1")):
        auth = {"type": kind, field: value, **({"username": "u"} if kind == "basic" else {})}
        enc = encrypt_secrets({"destination": dest(auth=auth)}, ENC, "ws/7")["destination"]["auth"][field]["enc"]
        assert secrets.decrypt(enc, ENC, "ws/7", f"destination.auth.{field}") == value
    # Only a Sumo Logic URL is a secret: the others are where events go, shown by settings get.
    assert encrypt_secrets({"destination": dest()}, ENC, "ws/7")["destination"]["url"] == PUBLIC


def test_a_plain_sumo_url_still_loads_from_the_table_but_a_command_must_encrypt_it():
    stored = {"registration": {"workspace_id": "7", "partner_id": "P", "role": "customer", "external_id": None},
              "config": {"jobs": "status", "destination": {"type": "http", "provider": "sumo", "url": SUMO_URL}}}
    state = SettingsState()
    state.apply(b"ws/7", orjson.dumps(stored), 0)
    assert orjson.loads(state.effective("7").destination)["url"] == SUMO_URL  # delivers as before
    unencrypted = build_command("put_workspace_config", {"workspace_id": "7", "config": stored["config"]},
                                "admin", "k1", SIGN, issued_at=NOW)
    state.apply(b"ws/7", orjson.dumps(stored), 1)
    decision = decide(state, orjson.dumps(unencrypted), 5, POLICY, NOW)
    assert decision.status == "rejected" and "must be encrypted" in decision.reason
    assert check(dest(provider="sumo", url=SUMO_URL.replace("endpoint4.collection.sumologic.com",
                                                             "93.184.215.14"))) is None
    assert "not a globally routable" in check(dest(provider="sumo", url="https://10.0.0.5/receiver/v1/http/x"))


@pytest.mark.parametrize("destination, reason", [
    (dest(auth={"type": "basic", "username": "a:b", "password": "p"}), "auth.username"),
    (dest(auth={"type": "basic", "username": "a\nb", "password": "p"}), "control character"),
    (dest(auth={"type": "api_key", "header": "Bad Name", "value": "v"}), "not a valid HTTP header name"),
    (dest(auth={"type": "api_key", "header": "X-K", "value": "v\r\nX-Injected: 1"}), "control character"),
    (dest(auth={"type": "bearer", "token": ""}), "empty"),
    (dest(auth={"type": "bearer", "token": "t"}, secret_headers={"authorization": "x"}),
     "sets the Authorization header, which secret_headers 'authorization' sets too"),
    (dest(provider="splunk", token="hec", auth={"type": "basic", "username": "u", "password": "p"}), "splunk token"),
    (dest(provider="datadog", api_key="dd", auth={"type": "api_key", "header": "DD-API-KEY", "value": "v"}),
     "datadog api_key"),
    (dest(auth={"type": "bearer", "token": {"enc": "plain"}}), "auth.token"),
    (dest(auth={"type": "oauth2_client_credentials", "token_url": "https://169.254.169.254/token", "client_id": "c",
                "client_secret": "s"}), "auth token url host '169.254.169.254'"),
    (dest(auth={"type": "oauth2_client_credentials", "token_url": "http://93.184.215.14/token", "client_id": "c",
                "client_secret": "s"}), "https"),
    (dest(auth={"type": "kerberos"}), "does not match any of the expected tags"),
    (dest(proxy_url="http://10.0.0.8:3128"), "proxy url host '10.0.0.8' resolves to 10.0.0.8, which is not"),
    (dest(proxy_url="http://user:pw@93.184.215.14:3128"), "proxy url must not carry credentials"),
    (dest(proxy_url="socks5://93.184.215.14:1080"), "proxy url scheme must be http or https"),
    (dest(tls={"client_cert": "x"}), "client_cert and client_key go together"),
    (dest(tls={"ca_bundle": "not a pem"}), "ca_bundle is not one or more PEM certificates"),
    # Secrets sent as header values: a line break would smuggle a header of the tenant's choosing.
    (dest(secret_headers={"X-Key": "k\r\nX-Injected: 1"}), "secret destination.secret_headers.X-Key is empty or "
                                                             "contains a control character"),
    (dest(secret_headers={"X-Key": ""}), "secret destination.secret_headers.X-Key is empty"),
    (dest(provider="datadog", api_key="dd\nkey"), "secret destination.api_key is empty or contains a control"),
    (dest(provider="splunk", token="hec\x00"), "secret destination.token is empty or contains a control"),
])
def test_auth_tls_and_proxy_options_are_checked_when_the_command_is(destination, reason):
    got = check(destination)
    assert got is not None and reason in got, got


def test_good_auth_tls_and_proxy_options_pass(tmp_path):
    ca = Authority("good-ca")
    client = ca.issue("streamer", server=False)
    assert check(dest(auth={"type": "basic", "username": "u", "password": "p"},
                      tls={"ca_bundle": ca.cert, "client_cert": client.cert, "client_key": client.key},
                      proxy_url="http://93.184.215.14:3128")) is None
    assert check(dest(auth={"type": "oauth2_client_credentials", "token_url": "https://93.184.215.14/token",
                            "client_id": "c", "client_secret": "s", "scope": "logs.write"})) is None
    other = ca.issue("other", server=False)
    assert "not the key of client_cert" in check(dest(tls={"client_cert": client.cert, "client_key": other.key}))
    assert "tls needs an https url" in check(dest(url="http://127.0.0.1:9/x", tls={"ca_bundle": ca.cert}), LOOSE)


def test_urls_in_names_every_host_the_worker_will_connect_to():
    config = encrypt_secrets({"destination": dest(
        provider="sumo", url=SUMO_URL, proxy_url="http://proxy.example:3128",
        auth={"type": "oauth2_client_credentials", "token_url": "https://idp.example/token", "client_id": "c",
              "client_secret": "s"})}, ENC, "ws/7")
    decrypt = lambda env, field: secrets.decrypt(env, ENC, "ws/7", field)  # noqa: E731
    assert urls_in({"config": config}, decrypt) == [SUMO_URL, "https://idp.example/token", "http://proxy.example:3128"]
    wrong = lambda env, field: secrets.decrypt(env, ENC, "ws/8", field)  # noqa: E731
    assert urls_in({"config": config}, wrong)[0] == "https://idp.example/token"  # refused later, by the rules


# -- request building --------------------------------------------------------------------------------

def test_each_auth_type_sets_its_header_and_lists_every_form_of_its_secret():
    def creds(auth: dict, **over):
        enc = encrypt_secrets({"destination": dest(auth=auth, **over)}, ENC, "ws/7")["destination"]
        return credentials(enc, ENC, "ws/7")

    basic = creds({"type": "basic", "username": "audit", "password": "pä:ss"})
    assert basic.headers == {"Authorization": "Basic " + base64.b64encode("audit:pä:ss".encode()).decode()}
    assert "pä:ss" in basic.secrets and basic.headers["Authorization"].split()[1] in basic.secrets
    assert creds({"type": "api_key", "header": "X-Api-Key", "value": "key-123456"}).headers == {"X-Api-Key": "key-123456"}
    bearer = creds({"type": "bearer", "token": "tok-abcdefgh"}, headers={"X-Env": "prod"})
    assert bearer.headers == {"X-Env": "prod", "Authorization": "Bearer tok-abcdefgh"}
    assert creds({"type": "none"}).headers == {} and creds({"type": "none"}).oauth2 is None
    oauth = creds({"type": "oauth2_client_credentials", "token_url": "https://idp/t", "client_id": "c",
                   "client_secret": "cs-secret"})
    assert oauth.headers == {} and oauth.oauth2.client_secret == "cs-secret" and "cs-secret" in oauth.secrets
    sumo = credentials(encrypt_secrets({"destination": dest(provider="sumo", url=SUMO_URL)}, ENC, "ws/7")["destination"],
                       ENC, "ws/7")
    assert sumo.url == SUMO_URL and "ZaVnC4dhaV2-sumo-token-1f0e" in sumo.secrets  # the token alone, as echoed
    stored_plain = credentials(dest(provider="sumo", url=SUMO_URL), ENC, "ws/7")  # from before it was a secret
    assert stored_plain.url == SUMO_URL and "ZaVnC4dhaV2-sumo-token-1f0e" in stored_plain.secrets


def test_the_client_credentials_grant_and_token_renewal():
    body, headers = token_request("my client", "s&cret:1", "a b", client_auth="basic")
    assert urllib.parse.parse_qs(body.decode()) == {"grant_type": ["client_credentials"], "scope": ["a b"]}
    user, _, password = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)) == ("my client", "s&cret:1")
    body, headers = token_request("c", "s", None, client_auth="body")
    assert urllib.parse.parse_qs(body.decode()) == {"grant_type": ["client_credentials"], "client_id": ["c"],
                                                    "client_secret": ["s"]}
    assert "Authorization" not in headers
    assert parse_token(b'{"access_token": "a", "token_type": "bearer", "expires_in": 3600}') == ("a", 3600.0)
    assert parse_token(b'{"access_token": "a"}') == ("a", None)
    for bad in (b"<html>", b'{"error": "x"}', b'{"access_token": "a", "token_type": "mac"}'):
        with pytest.raises(ValueError):
            parse_token(bad)
    assert renew_at(3600, 10.0) == 10.0 + 3300  # five minutes early
    assert renew_at(60, 10.0) == 40.0  # short-lived: half way
    assert renew_at(None, 0.0) == 3300.0  # no expires_in: an hour, less the margin


# -- the sink, against real servers ------------------------------------------------------------------

def deliveries(n: int, ws: str = "7") -> list[Delivery]:
    return [Delivery(f"workspace:{ws}", b"{}", ws, f"e-{i}", "job_summary", orjson.dumps({"id": f"e-{i}"}))
            for i in range(n)]


def encrypted(destination: dict, ws: str = "7") -> dict:
    enc = encrypt_secrets({"jobs": "status", "destination": destination}, ENC, f"ws/{ws}")
    return Configuration.model_validate(enc).destination.model_dump(mode="json")


async def test_a_destination_is_found_by_its_routed_bytes_but_only_if_they_are_its_own():
    sink = HttpSink(ENC, allow_private=True, concurrency=4, timeout_s=5, trust_env=False)
    a, b = dest(url="https://a.example.com/x"), dest(url="https://b.example.com/x")
    routed_a = orjson.dumps(a)
    found = sink._destination(a, "ws/7", routed_a)
    assert sink._destination(dict(a), "ws/7", routed_a) is found  # a batch later: no new entry
    assert sink._destination(a, "ws/8", routed_a) is not found  # another scope's secrets
    # Bytes that are not the destination's (a caller that does not route): never a's entry.
    assert sink._destination(b, "ws/7", routed_a).dest["url"] == "https://b.example.com/x"
    assert sink._destination(b, "ws/7").dest["url"] == "https://b.example.com/x"
    await sink.close()


async def test_each_auth_type_is_accepted_by_the_contract_server_and_oauth2_recovers_a_revoked_token():
    server = ProviderServer()
    await server.start()
    sink = HttpSink(ENC, allow_private=True, concurrency=4, timeout_s=5, trust_env=False)
    try:
        server.required["basic"] = {"Authorization": "Basic " + base64.b64encode(b"audit:pw-1").decode()}
        server.required["key"] = {"X-Api-Key": "key-1"}
        server.required["bearer"] = {"Authorization": "Bearer tok-1"}
        server.oauth.add("oauth")
        oauth = {"type": "oauth2_client_credentials", "token_url": server.token_url, "client_id": OAUTH_CLIENT_ID,
                 "client_secret": OAUTH_CLIENT_SECRET, "scope": OAUTH_SCOPE}
        cases = {"basic": {"type": "basic", "username": "audit", "password": "pw-1"},
                 "key": {"type": "api_key", "header": "X-Api-Key", "value": "key-1"},
                 "bearer": {"type": "bearer", "token": "tok-1"}, "oauth": oauth}
        configured = {name: encrypted(dest(url=server.url("generic", name), auth=auth)) for name, auth in cases.items()}
        for name, destination in configured.items():
            for _ in range(2):
                outcomes = await sink.send(destination, deliveries(2))
                assert all(o.ok for o in outcomes), (name, outcomes)
        assert server.unauthorized == {} and len(server.tokens) == 1  # one token, cached

        server.revoke_next.add("oauth")  # revoked after its next request: the one after that is refused
        oauth_dest = configured["oauth"]
        for _ in range(2):
            assert all(o.ok for o in await sink.send(oauth_dest, deliveries(1)))
        assert server.unauthorized == {"oauth": 1} and len(server.tokens) == 2
        assert [r["client_auth"] for r in server.token_requests] == ["basic", "basic"]

        # A destination that refuses every token (here: it wants a header the config lacks)
        # does not cost a token request per event: a token never accepted is renewed at most
        # once a minute.
        server.oauth.add("picky")
        server.required["picky"] = {"X-Tenant": "t-1"}
        picky = encrypted(dest(url=server.url("generic", "picky"), auth=oauth))
        for _ in range(3):
            refused = await sink.send(picky, deliveries(2))
            assert all(not o.ok and not o.retryable and o.error.startswith("HTTP 401") for o in refused)
        assert server.unauthorized["picky"] == 6 and len(server.tokens) == 3

        wrong = await sink.send(encrypted(dest(url=server.url("generic", "basic"), auth={
            "type": "basic", "username": "audit", "password": "wrong-password-1"})), deliveries(1))
        assert not wrong[0].ok and not wrong[0].retryable and wrong[0].error.startswith("HTTP 401")
        bad_client = await sink.send(encrypted(dest(url=server.url("generic", "oauth"), auth={
            **oauth, "client_secret": "not-the-secret-1", "client_auth": "body"})), deliveries(1))
        assert not bad_client[0].ok and not bad_client[0].retryable and "oauth2 token HTTP 401" in bad_client[0].error
        assert server.token_requests[-1]["client_auth"] == "body"
    finally:
        await sink.close()
        await server.stop()


async def test_a_sumo_url_token_is_redacted_from_error_texts():
    server = ProviderServer()
    await server.start()
    sink = HttpSink(ENC, allow_private=True, concurrency=4, timeout_s=5, trust_env=False)
    token = "sumo-secret-token-8d2f41"
    try:
        got = await sink.send(encrypted(dest(provider="sumo", url=server.url("sumo", token))), deliveries(3))
        assert all(o.ok for o in got) and len(server.items(token)) == 3
        server.faults[token] = Fault(statuses=[500], echo_path=True)  # an answer that names the URL's path
        echoed = await sink.send(encrypted(dest(provider="sumo", url=server.url("sumo", token))), deliveries(1))
        assert not echoed[0].ok and echoed[0].retryable and '"path": "***"' in echoed[0].error, echoed
        assert token not in echoed[0].error
    finally:
        await sink.close()
        await server.stop()


async def test_tls_with_the_destinations_ca_and_client_certificate(tmp_path):
    ca, stranger = Authority("dest-ca"), Authority("stranger-ca")
    client = ca.issue("streamer", server=False)
    server = ProviderServer()
    await server.start(ssl_context=server_context(ca, tmp_path))
    sink = HttpSink(ENC, allow_private=True, concurrency=4, timeout_s=5, trust_env=False)
    mtls = {"ca_bundle": ca.cert, "client_cert": client.cert, "client_key": client.key}
    try:
        good = encrypted(dest(url=server.url("generic", "mtls"), tls=mtls))
        assert all(o.ok for o in await sink.send(good, deliveries(2)))
        assert all(o.ok for o in await sink.send(good, deliveries(2)))
        assert len(server.items("mtls")) == 4
        assert len(sink._destinations) == 1  # the context was built once and kept with the destination
        wrong_ca = await sink.send(encrypted(dest(url=server.url("generic", "mtls"),
                                                  tls={**mtls, "ca_bundle": stranger.cert})), deliveries(1))
        assert not wrong_ca[0].ok and wrong_ca[0].retryable and "certificate verify failed" in wrong_ca[0].error
        no_cert = await sink.send(encrypted(dest(url=server.url("generic", "mtls"), tls={"ca_bundle": ca.cert})),
                                  deliveries(1))
        assert not no_cert[0].ok and no_cert[0].retryable
        system_cas = await sink.send(encrypted(dest(url=server.url("generic", "mtls"))), deliveries(1))
        assert not system_cas[0].ok  # a private CA is trusted only where a destination names it
        assert len(server.items("mtls")) == 4
    finally:
        await sink.close()
        await server.stop()


async def test_proxies_per_destination_and_from_the_environment(monkeypatch):
    server = ProviderServer()
    await server.start()
    own, deployment = ForwardProxy(), ForwardProxy()
    await own.start()
    await deployment.start()
    monkeypatch.setenv("HTTP_PROXY", deployment.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    sink = HttpSink(ENC, allow_private=True, concurrency=4, timeout_s=5)
    try:
        by_name = server.url("generic", "env").replace("127.0.0.1", "localhost")
        assert all(o.ok for o in await sink.send(encrypted(dest(url=by_name)), deliveries(1)))
        assert all(o.ok for o in await sink.send(encrypted(dest(url=server.url("generic", "direct"))), deliveries(1)))
        assert all(o.ok for o in await sink.send(encrypted(dest(url=server.url("generic", "own"),
                                                                proxy_url=own.url)), deliveries(1)))
        assert [len(server.items(n)) for n in ("env", "direct", "own")] == [1, 1, 1]
        assert deployment.forwarded == [f"localhost:{server.port}"]  # NO_PROXY kept 127.0.0.1 direct
        assert own.forwarded == [f"127.0.0.1:{server.port}"]  # a destination's own proxy wins over NO_PROXY
    finally:
        await sink.close()
        await server.stop()
        await own.stop()
        await deployment.stop()


async def test_through_a_proxy_the_destination_host_is_still_checked():
    """The proxy resolves the name: the sink checks it first, and refuses a private answer."""
    proxy = ForwardProxy()
    await proxy.start()
    sink = HttpSink(ENC, allow_private=False, concurrency=4, timeout_s=5, trust_env=False)
    try:
        # Stored straight in the table (a command would be refused): the connect-time guard is what is left.
        stored = {"type": "http", "provider": "generic", "url": "https://localhost:9/x",
                  "proxy_url": "http://93.184.215.14:3128"}  # never reached: the check comes first
        got = await sink.send(stored, deliveries(1))
        assert not got[0].ok and "not globally routable" in got[0].error and "proxy" in got[0].error, got
        private_proxy = await sink.send({**stored, "url": "https://93.184.215.14/x", "proxy_url": proxy.url},
                                        deliveries(1))
        assert not private_proxy[0].ok and not private_proxy[0].retryable, private_proxy
        assert "proxy url host 127.0.0.1 is not a globally routable address (loopback)" in private_proxy[0].error
        assert proxy.tunnels == []
    finally:
        await sink.close()
        await proxy.stop()


async def test_a_cached_token_is_renewed_before_it_expires():
    server = ProviderServer()  # issues tokens that live an hour
    await server.start()
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])

    def request() -> TokenRequest:
        body, headers = token_request(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_SCOPE, "body")
        return TokenRequest(server.token_url, body, headers, "oauth2 token")

    try:
        async with aiohttp.ClientSession() as session:
            first = await cache.get(session, b"k", request)
            now[0] += 3600 - 301  # just over five minutes before it expires: still the cached one
            assert await cache.get(session, b"k", request) == first and len(server.tokens) == 1
            now[0] += 2  # inside the margin: a new one, before the old one expires
            assert await cache.get(session, b"k", request) != first and len(server.tokens) == 2
            await cache.get(session, b"other", request)
            assert len(server.tokens) == 3  # one per key: per destination
    finally:
        await server.stop()

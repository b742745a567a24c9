"""SSRF guard: URL checks and the non-blocking host lookup the processor does first."""

from __future__ import annotations

import pytest

from streamer.settings.urls import check_url, resolve_hosts, urls_in


@pytest.mark.parametrize("url,reason", [
    ("http://93.184.215.14/x", "must be https"),
    ("https://127.0.0.1/x", "loopback"),
    ("https://[::1]/x", "loopback"),
    ("https://10.0.0.5/x", "private"),
    ("https://192.168.1.1/x", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[::ffff:127.0.0.1]/x", "loopback"),
    ("https://0.0.0.0/x", "unspecified"),
    ("https://u:p@93.184.215.14/x", "credentials"),
    ("https:///nohost", "no host"),
])
def test_unsafe_urls_are_refused(url, reason):
    result = check_url(url, allow_private=False)
    assert result is not None and reason in result, result


def test_public_https_is_accepted_and_names_are_checked_by_their_addresses():
    assert check_url("https://93.184.215.14/logs", allow_private=False) is None
    assert check_url("https://logs.example/x", False, {"logs.example": ["93.184.215.14"]}) is None
    assert "private" in check_url("https://logs.example/x", False, {"logs.example": ["93.184.215.14", "10.0.0.1"]})
    assert "does not resolve" in check_url("https://nowhere.example/x", False, {})
    assert check_url("http://127.0.0.1:8080/x", allow_private=True) is None


async def test_resolve_hosts_uses_the_loop_resolver():
    urls = urls_in({"config": {"destination": {"url": "https://localhost:8443/x", "endpoint_url": "https://1.2.3.4"}}})
    assert urls == ["https://localhost:8443/x", "https://1.2.3.4"]
    resolved = await resolve_hosts(urls)
    assert set(resolved) == {"localhost"} and resolved["localhost"]
    assert "loopback" in check_url(urls[0], False, resolved)
    assert await resolve_hosts(["https://no-such-host.invalid/x"], timeout=5) == {"no-such-host.invalid": []}


@pytest.fixture
def allowed_networks():
    from streamer.settings import urls

    urls.allow_private_networks("10.20.0.0/16, fd00:1::/64, 127.0.0.0/8, 169.254.0.0/16")
    yield
    urls.allow_private_networks(None)  # back to this process's environment


@pytest.mark.parametrize("url, reason", [
    ("https://10.20.1.2/intake", None),
    ("https://[fd00:1::5]/intake", None),
    ("https://[::ffff:10.20.1.2]/intake", None),
    ("https://10.21.0.1/intake", "private"),
    ("https://127.0.0.1/intake", "loopback"),  # listed, yet never re-admitted: the worker itself
    ("https://169.254.169.254/latest/meta-data", "link-local"),  # nor the cloud's metadata service
    ("http://10.20.1.2/intake", "https"),  # an allowed network does not allow plain http
])
def test_an_operators_private_networks_are_allowed_and_only_those(allowed_networks, url, reason):
    got = check_url(url, allow_private=False)
    assert got is None if reason is None else reason in got


def test_the_allowed_networks_are_validated_with_the_configuration(monkeypatch):
    from streamer.config import Config, ConfigError

    monkeypatch.setenv("STREAMER_PRIVATE_NETWORKS_ALLOWED", "10.20.0.0/16, 10.300.0.0/16")
    with pytest.raises(ConfigError, match="10.300.0.0/16"):
        Config.from_env()

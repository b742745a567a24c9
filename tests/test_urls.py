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

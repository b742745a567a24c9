"""SSRF guard for REST destinations (spec section 7).

Checked when a configuration is accepted (so the admin hears about it), and again at
connect time by the sink's resolver (so a DNS answer that changes later cannot point a
tenant's destination at the cluster's internal network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Iterable
from urllib.parse import urlsplit


def address_allowed(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    blocked = (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
               or addr.is_reserved or addr.is_unspecified or getattr(addr, "is_site_local", False))
    return not blocked


def check_url(url: str, allow_private: bool, resolved: dict[str, list[str]] | None = None) -> str | None:
    """None when the URL is acceptable, else the reason.

    `resolved` maps host names to their addresses, looked up beforehand without blocking
    (see `resolve_hosts`); a host missing from it does not resolve. Without it (the CLI,
    unit tests) the lookup happens here.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"url is malformed: {e}"
    if parts.username or parts.password:
        return "url must not carry credentials; use secret_headers"
    if not parts.hostname:
        return "url has no host"
    if allow_private:
        return None if parts.scheme in {"http", "https"} else "url scheme must be https"
    if parts.scheme != "https":
        return "url scheme must be https"
    host = parts.hostname
    if _is_ip(host):
        ips = [host]
    elif resolved is not None:
        ips = resolved.get(host) or []
    else:
        try:
            ips = [ai[4][0] for ai in socket.getaddrinfo(host, port or 443)]
        except socket.gaierror:
            ips = []
    if not ips:
        return f"url host {host!r} does not resolve"
    for ip in ips:
        if not address_allowed(ip):
            return f"url host {host!r} resolves to a private, loopback or link-local address ({ip})"
    return None


def urls_in(command: Any) -> list[str]:
    """The destination URLs a command carries (REST url, S3 endpoint_url, Azure account_url,
    Azure Monitor endpoint and authority)."""
    dest = (command.get("config") or {}).get("destination") if isinstance(command, dict) else None
    if not isinstance(dest, dict):
        return []
    return [u for u in (dest.get("url"), dest.get("endpoint_url"), dest.get("account_url"), dest.get("endpoint"),
                        dest.get("authority")) if isinstance(u, str)]


async def resolve_hosts(urls: Iterable[str], timeout: float = 5.0) -> dict[str, list[str]]:
    """Look up the URLs' host names on the event loop's resolver, never blocking the loop
    (a stalled lookup would stall the worker's consumer heartbeats)."""
    loop = asyncio.get_running_loop()
    out: dict[str, list[str]] = {}
    for url in urls:
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            continue
        if not host or _is_ip(host) or host in out:
            continue
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port or 443), timeout)
            out[host] = [ai[4][0] for ai in infos]
        except (OSError, asyncio.TimeoutError):
            out[host] = []
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False

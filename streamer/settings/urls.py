"""SSRF guard for REST destinations (spec section 7).

Checked when a configuration is accepted (so the admin hears about it), and again at
connect time by the sink's resolver (so a DNS answer that changes later cannot point a
tenant's destination at the cluster's internal network).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def address_allowed(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    blocked = (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
               or addr.is_reserved or addr.is_unspecified or getattr(addr, "is_site_local", False))
    return not blocked


def check_url(url: str, allow_private: bool, resolve: bool = True) -> str | None:
    """None when the URL is acceptable, else the reason."""
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
    try:
        ips = [host] if _is_ip(host) else [ai[4][0] for ai in socket.getaddrinfo(host, port or 443)] if resolve else []
    except socket.gaierror:
        return f"url host {host!r} does not resolve"
    for ip in ips:
        if not address_allowed(ip):
            return f"url host {host!r} resolves to a private, loopback or link-local address ({ip})"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False

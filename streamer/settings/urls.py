"""SSRF guard for REST destinations and S3 endpoints (spec section 7).

Checked when a configuration is accepted (so the admin hears about it), and again at
connect time by the sinks' resolvers (so a DNS answer that changes later cannot point a
tenant's destination at the cluster's internal network).

Only globally routable unicast addresses are allowed (`ipaddress`' `is_global`): that
excludes private, loopback, link-local, RFC 6598 shared space (100.64/10, where clouds put
metadata services), benchmarking, documentation, reserved and multicast space. IPv6
addresses that carry an IPv4 address (IPv4-mapped, 6to4, NAT64 64:ff9b::/96, Teredo) are
judged by that IPv4 address too.

An operator may name private networks that destinations may be in
(`STREAMER_PRIVATE_NETWORKS_ALLOWED`): an Azure or GCP private endpoint, an S3 VPC endpoint,
a log server inside the VPC. That is the deployment's decision, never a tenant's, and it
cannot re-admit loopback, link-local (cloud metadata at 169.254.169.254), unspecified or
multicast addresses: those are the worker itself and its host, whatever the network says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    out = []
    if addr.ipv4_mapped:
        out.append(addr.ipv4_mapped)
    if addr.sixtofour:
        out.append(addr.sixtofour)
    if addr.teredo:
        out.extend(addr.teredo)
    if addr in _NAT64:
        out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return out


def address_problem(ip: str) -> str | None:
    """None when `ip` is a globally routable unicast address, else what it is."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    candidates = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        candidates = _embedded_ipv4(addr) + candidates  # named by what it points at
    allowed = _allowed_networks()
    for a in candidates:
        for kind, test in (("unspecified", a.is_unspecified), ("loopback", a.is_loopback),
                           ("link-local", a.is_link_local), ("multicast", a.is_multicast)):
            if test:
                return kind
        if any(a in net for net in allowed) or (
                allowed and isinstance(a, ipaddress.IPv6Address) and len(candidates) > 1
                and all(any(v4 in net for net in allowed) for v4 in candidates[:-1])):
            continue  # an allowed network, or an IPv6 form of addresses in one
        for kind, test in (("shared address space (RFC 6598)", a in _SHARED),
                           ("private", a.is_private), ("reserved", a.is_reserved),
                           ("site-local", getattr(a, "is_site_local", False))):
            if test:
                return kind
        if not a.is_global:
            return "not globally routable"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_allowed: tuple[Network, ...] | None = None  # None: not read from the environment yet


def parse_networks(text: str) -> tuple[Network, ...]:
    """"10.20.0.0/16, fd00:1::/64" -> networks; ValueError naming a bad entry."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ValueError(f"{item!r} is not a network in CIDR notation ({e})") from None
    return tuple(out)


def allow_private_networks(networks: Iterable[str] | str | None) -> None:
    """Set the allowed private networks (None: read them again from the environment)."""
    global _allowed
    if networks is None:
        _allowed = None
    else:
        _allowed = parse_networks(networks if isinstance(networks, str) else ",".join(networks))


def _allowed_networks() -> tuple[Network, ...]:
    # Read once, lazily: the worker, the CLI and the sinks' resolvers all come through
    # here, and each process takes it from its own environment.
    global _allowed
    if _allowed is None:
        from streamer.config import Config

        _allowed = parse_networks(Config.from_env().private_networks_allowed)
    return _allowed


def address_allowed(ip: str) -> bool:
    return address_problem(ip) is None


def literal_problem(url: str) -> str | None:
    """For a URL whose host is an IP literal (which no resolver sees), why it is refused."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return "url is malformed"
    if host and _is_ip(host):
        problem = address_problem(host)
        if problem:
            return f"url host {host} is not a globally routable address ({problem})"
    return None


def check_url(url: str, allow_private: bool, resolved: dict[str, list[str]] | None = None,
              proxy: bool = False) -> str | None:
    """None when the URL is acceptable, else the reason.

    `resolved` maps host names to their addresses, looked up beforehand without blocking
    (see `resolve_hosts`); a host missing from it does not resolve. Without it (the CLI,
    unit tests) the lookup happens here. `proxy`: a forward proxy's URL, which may be
    `http` (a request to an https destination is a TLS tunnel through it).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"url is malformed: {e}"
    if parts.username or parts.password:
        return "url must not carry credentials" + ("" if proxy else "; use secret_headers or auth")
    if not parts.hostname:
        return "url has no host"
    if allow_private or proxy:
        if parts.scheme not in {"http", "https"}:
            return "url scheme must be https" if not proxy else "proxy url scheme must be http or https"
        if allow_private:
            return None
    elif parts.scheme != "https":
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
        problem = address_problem(ip)
        if problem:
            return f"url host {host!r} resolves to {ip}, which is not a globally routable address ({problem})"
    return None


def urls_in(command: Any, decrypt: Callable[[str, str], str] | None = None) -> list[str]:
    """The URLs a command's destination makes the worker connect to (REST url, token_url and
    proxy_url, S3 endpoint_url, Azure account_url, Azure Monitor endpoint and authority);
    [] for anything malformed. `decrypt(envelope, field)`: for an encrypted REST url (a Sumo
    Logic source URL); one that does not decrypt is left out (the rules refuse it)."""
    config = command.get("config") if isinstance(command, dict) else None
    dest = config.get("destination") if isinstance(config, dict) else None
    if not isinstance(dest, dict):
        return []
    url = dest.get("url")
    if isinstance(url, dict) and isinstance(url.get("enc"), str) and decrypt is not None:
        try:
            url = decrypt(url["enc"], "destination.url")
        except ValueError:
            url = None
    auth = dest.get("auth")
    token_url = auth.get("token_url") if isinstance(auth, dict) else None
    return [u for u in (url, token_url, dest.get("proxy_url"), dest.get("endpoint_url"), dest.get("account_url"),
                        dest.get("endpoint"), dest.get("authority")) if isinstance(u, str)]


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

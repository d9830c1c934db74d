"""Client address resolution and loopback checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache

FORWARDING_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded", "cf-connecting-ip")


@lru_cache(maxsize=4096)
def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host == "localhost"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class ProxyTrust:
    """Which peers may tell us the real client address through forwarding headers."""

    def __init__(self, trusted: Iterable[str]) -> None:
        from librefang.errors import ConfigError

        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._trusted: dict[str, bool] = {}
        for item in trusted:
            try:
                self.networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"trusted_proxies: {item!r} is not an IP address or network") from None

    def trusts(self, host: str) -> bool:
        """True when ``host`` is inside one of the trusted proxy networks."""
        if not self.networks:
            return False
        known = self._trusted.get(host)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        trusted = any(addr in net for net in self.networks)
        # Cached: every request through a proxy asks about the same few peers (bounded: cleared when full).
        if len(self._trusted) >= TRUST_CACHE_SIZE:
            self._trusted.clear()
        self._trusted[host] = trusted
        return trusted

    def client_ip(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client address: the TCP peer, or what a trusted proxy says it forwarded.

        Order: CF-Connecting-IP, X-Real-IP, Forwarded (right-most ``for=``), then the right-most
        X-Forwarded-For hop that is not itself a trusted proxy. A value that is not an IP address
        is ignored, so a proxy passing garbage cannot mint arbitrary limiter keys.
        """
        if not self.networks or not self.trusts(peer):
            return peer
        headers = forwarding_values(headers)
        for name in ("cf-connecting-ip", "x-real-ip"):
            value = _ip_or_none(headers.get(name))
            if value:
                return value
        forwarded = headers.get("forwarded")
        if forwarded:
            for part in reversed(forwarded.split(",")):
                for pair in part.split(";"):
                    key, _, value = pair.strip().partition("=")
                    if key.lower() == "for":
                        address = _ip_or_none(_strip_forwarded_node(value))
                        if address:
                            return address
        xff = headers.get("x-forwarded-for")
        if xff:
            hops = [hop for hop in (_ip_or_none(h) for h in xff.split(",")[-MAX_HOPS:]) if hop]
            for hop in reversed(hops):  # right-most address not itself a trusted proxy
                if not self.trusts(hop):
                    return hop
            if hops:
                return hops[0]
        return peer


MAX_HOPS = 32  # X-Forwarded-For hops looked at (right-most); bounds work on a hostile header
TRUST_CACHE_SIZE = 4096


def _strip_forwarded_node(value: str) -> str:
    """``"[2001:db8::1]:4711"`` → ``2001:db8::1``; ``192.0.2.1:80`` → ``192.0.2.1`` (RFC 7239 node)."""
    value = value.strip().strip('"')
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


@lru_cache(maxsize=4096)  # the same client addresses arrive again and again
def _ip_or_none(value: str | None) -> str | None:
    """The canonical text of an IP address, or None when ``value`` is not one."""
    if not value:
        return None
    value = value.strip()
    if len(value) > 64:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


_FORWARDING_NAMES = frozenset(FORWARDING_HEADERS)


def forwarding_values(headers: Mapping[str, str]) -> dict[str, str]:
    """The forwarding headers present, by lower-case name (first occurrence, like ``Headers.get``).

    One pass over the names present: in werkzeug's Headers every lookup of a missing name raises
    and catches an exception, and most of the forwarding headers are missing on every request.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _FORWARDING_NAMES and lowered not in found:
            found[lowered] = value
    return found


def has_forwarding_headers(headers: Mapping[str, str]) -> bool:
    """True when the request carries any header a proxy uses to name the original client."""
    # One pass over the names present: in werkzeug's Headers every lookup of a missing name raises
    # and catches an exception, and this runs on every request.
    return any(name.lower() in _FORWARDING_NAMES for name in headers.keys())

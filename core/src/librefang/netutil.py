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
        self.networks = []
        for item in trusted:
            self.networks.append(ipaddress.ip_network(item.strip(), strict=False))

    def trusts(self, host: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def client_ip(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client address: the TCP peer, or what a trusted proxy says it forwarded."""
        if not self.trusts(peer):
            return peer
        for name in ("cf-connecting-ip", "x-real-ip"):
            value = headers.get(name)
            if value:
                return value.strip()
        forwarded = headers.get("forwarded")
        if forwarded:
            for part in reversed(forwarded.split(",")):
                for pair in part.split(";"):
                    key, _, value = pair.strip().partition("=")
                    if key.lower() == "for" and value:
                        return value.strip('"[]').split("]:")[0]
        xff = headers.get("x-forwarded-for")
        if xff:
            hops = [h.strip() for h in xff.split(",") if h.strip()]
            for hop in reversed(hops):  # right-most address not itself a trusted proxy
                if not self.trusts(hop):
                    return hop
            if hops:
                return hops[0]
        return peer


def has_forwarding_headers(headers: Mapping[str, str]) -> bool:
    return any(name in headers for name in FORWARDING_HEADERS)

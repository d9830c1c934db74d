"""Outbound URL rules (SSRF) for URLs a client hands the daemon, checked before any I/O.

Two policies:

- :func:`check_fetch_url` + :func:`fetch_limited` — for fetching a *remote* document (a catalog
  bundle): ``http``/``https`` only, no userinfo, blocked hostnames, and every resolved address must be
  public (private, loopback, link-local, unique-local, unspecified, CGNAT, metadata refused; IPv4-mapped,
  NAT64 and 6to4 IPv6 are canonicalised to the IPv4 inside first). ``allowed_hosts`` (hostnames, ``*.``
  globs, CIDRs) may open private ranges, never the metadata ones. The connection is pinned to the
  address that was checked (no DNS rebinding between check and connect) and redirects are not followed.
- :func:`check_base_url` — for a provider base URL (``PUT /api/providers/{name}/url``): same syntax
  rules, loopback and private addresses allowed (local model servers live there) but cloud metadata
  endpoints refused.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:  # pragma: no cover - httpx is imported by whoever builds the client
    import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_CHARS = 2048
BLOCKED_HOSTNAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "metadata.aws.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "169.254.169.254",
        "100.100.100.200",
        "192.0.0.192",
        "0.0.0.0",
        "::1",
        "::",
    }
)
METADATA_HOSTNAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.aws.internal", "instance-data", "instance-data.ec2.internal"}
)
# Never reachable, whatever the allow-list says: link-local (cloud metadata), CGNAT, the Oracle/Alibaba
# metadata address and the AWS IPv6 metadata address.
ALWAYS_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "100.64.0.0/10", "192.0.0.192/32", "fe80::/10", "fd00:ec2::254/128")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


class SsrfError(ValueError):
    """A URL that must not be fetched; the message says why (safe to show the client)."""


class ResponseTooLarge(Exception):
    """The fetched document exceeded the size limit (the remote side's fault, not the URL's)."""


def canonical_ip(addr: IPAddress) -> IPAddress:
    """The IPv4 address hidden in an IPv4-mapped, NAT64 or 6to4 IPv6 address, else ``addr``."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if addr in SIX_TO_FOUR and addr.sixtofour is not None:
            return addr.sixtofour
    return addr


def _parse(url: str) -> SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise SsrfError("URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise SsrfError(f"URL longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise SsrfError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SsrfError(f"URL is malformed: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise SsrfError(f"URL scheme must be http or https, not {parts.scheme or 'none'!r}")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise SsrfError("URL must not contain credentials (user:password@)")
    if not parts.hostname:
        raise SsrfError("URL has no host")
    if port is not None and not 0 < port < 65536:
        raise SsrfError("URL port is out of range")
    return parts


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None


def _always_blocked(addr: IPAddress) -> bool:
    addr = canonical_ip(addr)
    return any(addr.version == net.version and addr in net for net in ALWAYS_BLOCKED)


def _not_public(addr: IPAddress) -> str | None:
    addr = canonical_ip(addr)
    if _always_blocked(addr):
        return "a link-local or metadata address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private or (isinstance(addr, ipaddress.IPv6Address) and addr in ipaddress.ip_network("fc00::/7")):
        return "a private address"
    if addr.is_multicast or addr.is_reserved or not addr.is_global:
        return "a non-public address"
    return None


class AllowList:
    """Hosts and networks the operator opened for private fetches (``*.corp`` globs, CIDRs, names)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.names: list[str] = []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry)

    def host(self, hostname: str) -> bool:
        return any(fnmatch.fnmatchcase(hostname, pattern) for pattern in self.names)

    def address(self, addr: IPAddress) -> bool:
        addr = canonical_ip(addr)
        return any(addr.version == net.version and addr in net for net in self.networks)


def check_base_url(url: str) -> str:
    """Validate a provider base URL; returns it without a trailing slash. Raises :class:`SsrfError`."""
    parts = _parse(url.strip())
    if parts.query or parts.fragment:
        raise SsrfError("base URL must not have a query string or fragment")
    host = parts.hostname.lower().rstrip(".")
    if host in METADATA_HOSTNAMES:
        raise SsrfError(f"host {host!r} is a cloud metadata endpoint")
    literal = _literal_ip(host)
    if literal is not None and _always_blocked(literal):
        raise SsrfError(f"host {host!r} is a link-local or metadata address")
    return url.strip().rstrip("/")


async def check_fetch_url(url: str, allowed: AllowList | None = None) -> tuple[SplitResult, list[IPAddress]]:
    """Validate a URL for a remote fetch and resolve it; returns the parts and the checked addresses."""
    allowed = allowed or AllowList()
    parts = _parse(url.strip())
    host = parts.hostname.lower().rstrip(".")
    if host in BLOCKED_HOSTNAMES or host.endswith(".localhost"):
        raise SsrfError(f"host {host!r} is blocked")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    literal = _literal_ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise SsrfError(f"host {host!r} does not resolve: {exc}") from None
        addresses = []
        for info in infos:
            addr = _literal_ip(str(info[4][0]))
            if addr is not None and addr not in addresses:
                addresses.append(addr)
        if not addresses:
            raise SsrfError(f"host {host!r} does not resolve")
    host_allowed = allowed.host(host)
    for addr in addresses:
        if _always_blocked(addr):
            raise SsrfError(f"host {host!r} resolves to a link-local or metadata address")
        reason = _not_public(addr)
        if reason and not (host_allowed or allowed.address(addr)):
            raise SsrfError(f"host {host!r} resolves to {reason} ({canonical_ip(addr)})")
    return parts, addresses


async def fetch_limited(
    client: httpx.AsyncClient,
    url: str,
    *,
    allowed: AllowList | None = None,
    max_bytes: int = 4 * 1024 * 1024,
    timeout_secs: float = 15.0,
) -> tuple[int, bytes]:
    """GET ``url`` through ``client`` after :func:`check_fetch_url`, connecting to the checked address
    only and never following a redirect.

    Returns ``(status, body)``; a body longer than ``max_bytes`` raises :class:`ResponseTooLarge`.
    """
    parts, addresses = await check_fetch_url(url, allowed)
    addr = addresses[0]
    host = parts.hostname.rstrip(".")
    ip_host = f"[{addr}]" if addr.version == 6 else str(addr)
    port = f":{parts.port}" if parts.port else ""
    pinned = parts._replace(netloc=f"{ip_host}{port}").geturl()
    headers = {"Host": host + port, "Accept": "application/json", "User-Agent": "librefang-catalog"}
    # The TLS name stays the real host name, so certificate checks are unchanged by pinning.
    extensions = {"sni_hostname": host} if parts.scheme.lower() == "https" else {}
    async with client.stream("GET", pinned, headers=headers, extensions=extensions, timeout=timeout_secs,
                             follow_redirects=False) as response:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ResponseTooLarge(f"response is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"response is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)

"""The SSRF rules themselves (address canonicalisation, allow-list, base-URL policy)."""

from __future__ import annotations

import ipaddress

import pytest
from librefang_providers.ssrf import AllowList, SsrfError, canonical_ip, check_base_url, check_fetch_url


def test_canonical_ip_unwraps_ipv4_inside_ipv6():
    assert str(canonical_ip(ipaddress.ip_address("::ffff:127.0.0.1"))) == "127.0.0.1"
    assert str(canonical_ip(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))) == "169.254.169.254"  # NAT64
    assert str(canonical_ip(ipaddress.ip_address("2002:0a00:0001::1"))) == "10.0.0.1"  # 6to4
    assert str(canonical_ip(ipaddress.ip_address("2606:4700::1111"))) == "2606:4700::1111"


@pytest.mark.parametrize(
    "url",
    [
        "http://64:ff9b::7f00:1/",  # malformed: IPv6 without brackets
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://[fd00::1]/",  # unique local
        "http://[fe80::1]/",  # link-local
        "http://0.0.0.0/",
        "http://100.64.1.1/",  # CGNAT
        "http://192.168.1.1/",
        "http://224.0.0.1/",
        "http://app.localhost/",
        "http://exa mple.com/",
    ],
)
async def test_non_public_destinations_are_refused(url):
    with pytest.raises(SsrfError):
        await check_fetch_url(url)


async def test_public_literal_address_passes_and_allow_list_opens_private_ranges():
    parts, addresses = await check_fetch_url("https://8.8.8.8/catalog.json")
    assert parts.hostname == "8.8.8.8" and str(addresses[0]) == "8.8.8.8"
    allowed = AllowList(["10.0.0.0/8", "*.corp.example"])
    _, addresses = await check_fetch_url("http://10.1.2.3/", allowed)
    assert str(addresses[0]) == "10.1.2.3"
    with pytest.raises(SsrfError):
        await check_fetch_url("http://192.168.0.1/", allowed)
    with pytest.raises(SsrfError, match="metadata"):
        await check_fetch_url("http://169.254.1.1/", AllowList(["169.254.0.0/16"]))


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:11434", True),
        ("http://192.168.1.20:8000/v1/", True),
        ("https://api.example.com/v1", True),
        ("ftp://example.com", False),
        ("http://user:pw@example.com/v1", False),
        ("https://@example.com/v1", False),
        ("http://169.254.169.254/v1", False),
        ("http://[::ffff:169.254.169.254]/v1", False),
        ("http://metadata.google.internal/v1", False),
        ("https://example.com/v1?key=abc", False),
        ("javascript:alert(1)", False),
        ("", False),
    ],
)
def test_base_url_policy(url, ok):
    if ok:
        assert check_base_url(url) == url.rstrip("/")
    else:
        with pytest.raises(SsrfError):
            check_base_url(url)

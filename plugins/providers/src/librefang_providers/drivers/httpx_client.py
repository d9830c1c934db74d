"""The pooled ``httpx`` client of the providers plugin's non-completion calls (probe, catalog
download, OAuth, provider test) and of third-party drivers (``DriverConfig.http_client``).

Imported on first use only (``import httpx`` costs more at start-up than the rest of the plugin).
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx


class NoCookies(CookieJar):
    """A cookie jar that never stores a cookie (and so never sends one).

    LLM APIs authenticate with keys, not cookies; a shared client that kept a provider's (or a
    load balancer's) Set-Cookie would replay it to every later call of every agent. Refusing in the
    policy covers any path into the jar; the overrides skip the parsing httpx asks for on every
    response."""

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Any) -> None:
        return None

    def set_cookie_if_ok(self, cookie: Any, request: Any) -> None:
        return None


class NoCookieStore(httpx.Cookies):
    """``httpx.Cookies`` over a :class:`NoCookies` jar that skips reading responses altogether
    (httpx builds a ``urllib`` request wrapper for every response just to offer it to the jar)."""

    def __init__(self) -> None:
        super().__init__(NoCookies())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose cookie store never keeps anything (see :class:`NoCookies`)."""

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        store = self.__dict__.get("_no_cookies")
        if store is None:
            store = self.__dict__["_no_cookies"] = NoCookieStore()
        return store

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None  # nothing is kept: assigning cookies to the shared client has no effect


def new_http_client(max_connections: int = 100) -> httpx.AsyncClient:
    """A pooled async client (keep-alive; per-request timeouts are set by each call; no cookies)."""
    return CookielessClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20, keepalive_expiry=30),
        timeout=httpx.Timeout(120.0, connect=10.0),
        follow_redirects=False,
        cookies=NoCookies(),
    )

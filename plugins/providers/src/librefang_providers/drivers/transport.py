"""The HTTP clients of the built-in drivers: a lean HTTP/1.1 client for the completion calls
(``h1.py``), aiohttp's session for a completion call that goes through a proxy, and one ``httpx``
client for everything else (probe, catalog download, OAuth, provider test, and any third-party driver
that uses ``DriverConfig.http_client`` / ``HTTPDriver.client``).

Why several: the completion call is the hot path of every agent turn. Measured per streamed chat
completion against the fake provider (client-process CPU): httpx 2.0 ms, aiohttp 0.6 ms (its HTTP
parser is C; httpx goes through httpcore, h11 and anyio in Python), and in a later measurement
aiohttp 0.50 ms against 0.35 ms for ``h1.py`` (aiohttp runs ~8 Python calls per received SSE chunk in
its stream reader, and ~60 per request). The other calls are rare and keep httpx, whose
pinned-address transport the SSRF rules (``ssrf.fetch_limited``) are built on.

All clients are created on first use (``aiohttp`` and ``httpx`` are imported then, not when the
daemon starts), the completion clients inside the running event loop. They keep no cookies, follow
no redirects, keep connections alive (``max_connections`` from ``[providers]``), and honour the
environment as httpx does by default: ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY``, and the CA bundle
from ``SSL_CERT_FILE``/``SSL_CERT_DIR`` or else ``certifi``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.request
from typing import Any
from urllib.parse import urlsplit

# Idle keep-alive connections are closed after this long (httpx's pool used the same expiry).
KEEPALIVE_SECS = 30.0
# Longest response header line / field the parser accepts (aiohttp's default 8 KiB is below what
# h11 accepted; some gateways send long policy or tracing headers).
MAX_HEADER_BYTES = 64 * 1024
_MAX_PROXY_CACHE = 256


def ssl_context() -> ssl.SSLContext | bool:
    """The CA bundle httpx trusts by default: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set, else certifi's.

    With either variable set this is ``True``: aiohttp's own verifying context (made when aiohttp is
    imported) already loads them through OpenSSL's default paths, and loading a bundle again costs
    about 40 ms of CPU."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return True
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return True
    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(("http/1.1",))
    return context


def env_proxies() -> dict[str, str]:
    """The proxy variables of the environment (``{"https": url, "all": url, "no": "hosts"}``)."""
    return urllib.request.getproxies_environment()


def proxy_for(url: str, proxies: dict[str, str]) -> str | None:
    """The proxy ``url`` goes through under ``proxies`` (``NO_PROXY`` honoured), or ``None``."""
    if not proxies:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host and urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


class HTTPPool:
    """The lazily created clients the built-in drivers share (one per registry, or per driver
    built without one). ``aclose`` closes them all; a closed pool makes fresh ones on its next use."""

    def __init__(self, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._httpx: Any = None
        self._h1: Any = None
        self._ssl: Any = None
        self._proxies: dict[str, str] | None = None  # read from the environment on first need
        self._proxy_cache: dict[Any, str | None] = {}

    def session(self) -> Any:
        """The ``aiohttp.ClientSession`` (created on the first call, in the running loop)."""
        session = self._session
        if session is not None and self._loop is asyncio.get_running_loop() and not session.closed:
            return session
        return self._new_session()

    def _new_session(self) -> Any:
        import aiohttp  # first use only: not imported at daemon start

        # A session belongs to the loop it was made in; a pool used from another loop (a new test's
        # loop, say) starts over there. The old session's connections die with their loop.
        self._loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=KEEPALIVE_SECS,
                                         ssl=ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # LLM APIs use keys: never keep or replay a cookie
            timeout=aiohttp.ClientTimeout(total=None),  # each call passes its own timeouts
            trust_env=False,  # proxies are resolved once below (trust_env would also read ~/.netrc)
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        self._proxies = None  # read again for a new session, as httpx reads them once per client
        return self._session

    def proxy(self, url: Any) -> str | None:
        """The environment's proxy for ``url`` (a ``str`` or a ``yarl.URL``; cached per URL; ``None``
        without proxy variables)."""
        proxies = self._proxies
        if proxies is None:
            proxies = self._proxies = env_proxies()
            self._proxy_cache = {}
        if not proxies:
            return None
        try:
            return self._proxy_cache[url]
        except KeyError:
            if len(self._proxy_cache) >= _MAX_PROXY_CACHE:
                self._proxy_cache.clear()
            found = self._proxy_cache[url] = proxy_for(str(url), self._proxies)
            return found

    def h1(self) -> Any:
        """The lean HTTP/1.1 client of the completion calls (``h1pool.H1Pool``; made on first use, in the
        running loop; a call through a proxy goes over :meth:`session` instead)."""
        pool = self._h1
        if pool is not None and not pool.closed and pool.loop is asyncio.get_running_loop():
            return pool
        from librefang_providers.drivers.h1pool import H1Pool

        if self._ssl is None:
            context = ssl_context()
            if context is True:  # SSL_CERT_FILE/SSL_CERT_DIR: OpenSSL's default paths read them
                context = ssl.create_default_context()
                context.set_alpn_protocols(("http/1.1",))
            self._ssl = context
        self._proxies = None  # read again for a new pool
        self._h1 = H1Pool(self.max_connections, self._ssl)
        return self._h1

    def httpx_client(self) -> Any:
        """The pooled ``httpx.AsyncClient`` of the non-completion calls (created on first use)."""
        client = self._httpx
        if client is None or client.is_closed:
            from librefang_providers.drivers.httpx_client import new_http_client  # imports httpx

            client = self._httpx = new_http_client(self.max_connections)
        return client

    async def aclose(self) -> None:
        """Close the session and the httpx client (each only if it was created)."""
        session, self._session = self._session, None
        client, self._httpx = self._httpx, None
        h1, self._h1 = self._h1, None
        if h1 is not None:
            h1.close()
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:  # its loop is gone (made in another loop): nothing left to close
                pass
        if client is not None:
            await client.aclose()


class StreamResponse:
    """What :meth:`HTTPDriver.open_stream` yields: the status, headers and body of a successful
    streaming response. ``aiter_bytes()`` gives the body as it arrives (decompressed)."""

    __slots__ = ("raw", "status_code", "headers", "content")

    def __init__(self, raw: Any) -> None:
        self.raw = raw  # an h1.Response (or an aiohttp.ClientResponse through a proxy)
        self.status_code: int = raw.status
        self.headers = raw.headers
        self.content = raw.content

    def aiter_bytes(self) -> Any:
        """The body's chunks as they arrive."""
        return self.content.iter_any()


async def read_limited(response: Any, limit: int) -> tuple[bytes, bool]:
    """The body of an aiohttp response, at most ``limit`` bytes; the flag says it was longer."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            chunks.append(chunk[: limit - (size - len(chunk))])
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False

"""The keep-alive connection pool of the lean HTTP/1.1 client (``h1.py``): connections per
(scheme, host, port), at most ``limit`` open at once (a caller waits for a slot within the
``connect`` timeout; an idle connection of another host is closed to make room), idle ones reused
while ``h1.KEEPALIVE_SECS`` have not passed, TLS with the pool's context and hostname checking."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.http import SERVER_SOFTWARE
from yarl import URL

from librefang_providers.drivers.h1 import _DONE, _HEAD, Connection, Response


class H1Pool:
    """The kept-alive connections of one event loop, at most ``limit`` open at once."""

    def __init__(self, limit: int, ssl_context: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = max(1, limit)
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def request(self, url: Any, body: bytes, headers: Mapping[str, str],
                      limits: aiohttp.ClientTimeout) -> Response:
        """POST ``body`` to ``url``; the response once its status and headers arrived."""
        if not isinstance(url, URL):
            url = URL(url)
        scheme = url.scheme
        if scheme not in ("http", "https") or not url.raw_host:
            raise aiohttp.InvalidUrlClientError(url)
        head = [f"POST {url.raw_path_qs} HTTP/1.1\r\n", ""]
        given = set()
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError("Newline or carriage return character detected in HTTP header")
            lowered = name.lower()
            if lowered == "content-length":
                continue  # the body's own length is written below
            head.append(f"{name}: {value}\r\n")
            given.add(lowered)
        if "host" not in given:  # a configured Host header replaces the URL's, as with aiohttp
            head[1] = f"Host: {url.host_port_subcomponent}\r\n"
        if "accept-encoding" not in given:
            head.append("Accept-Encoding: gzip, deflate\r\n")
        if "user-agent" not in given:
            head.append(f"User-Agent: {SERVER_SOFTWARE}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        data = "".join(head).encode("utf-8") + body
        conn = await self._acquire((scheme, url.raw_host, url.port or (443 if scheme == "https" else 80)), limits)
        idle = limits.sock_read
        try:
            conn._reset()
            conn.phase = _HEAD
            conn.last_data = self.loop.time()
            conn.transport.write(data)
            await conn.read_head(idle)
        except BaseException:
            conn.close()
            self.release(conn)
            raise
        return Response(conn, idle)

    async def _acquire(self, key: tuple[str, str, int], limits: aiohttp.ClientTimeout) -> Connection:
        if self.closed:
            raise RuntimeError("Session is closed")
        idle = self._idle.get(key)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            self._drop(conn)
        try:
            async with asyncio.timeout(limits.connect):
                while self._open >= self.limit:
                    if not self._drop_oldest_idle():
                        waiter = self.loop.create_future()
                        self._waiters.append(waiter)
                        try:
                            await waiter
                        except BaseException:
                            if waiter in self._waiters:
                                self._waiters.remove(waiter)
                            elif waiter.done() and not waiter.cancelled():
                                self._wake_one()  # woken but leaving: pass the turn on
                            raise
                        idle = self._idle.get(key)
                        while idle:
                            conn = idle.pop()
                            if conn.usable(self.loop.time()):
                                return conn
                            self._drop(conn)
                self._open += 1
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {key[1]}:{key[2]}") from None
        try:
            return await self._connect(key, limits)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, key: tuple[str, str, int], limits: aiohttp.ClientTimeout) -> Connection:
        scheme, host, port = key
        ssl = self._ssl if scheme == "https" else None
        try:
            async with asyncio.timeout(limits.sock_connect):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self, key), host, port, ssl=ssl,
                    server_hostname=host if ssl is not None else None)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {host}:{port}") from None
        except OSError as exc:
            raise aiohttp.ClientConnectionError(
                f"Cannot connect to host {host}:{port} ssl:{'default' if ssl else False} [{exc.strerror or exc}]"
            ) from exc
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return conn

    def release(self, conn: Connection) -> None:
        """A connection whose response is over (or abandoned): kept for reuse when its response was
        read to its end and it may be, closed otherwise."""
        if conn.pool is not self or conn.phase == -1:  # not ours, or already given back
            return
        if conn.phase == _DONE and conn.reusable and not conn.closed and not self.closed and not conn.chunks:
            conn.phase = 0
            conn.idle_since = self.loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            self._drop(conn)
        self._wake_one()

    def _drop(self, conn: Connection) -> None:
        conn.close()
        conn.phase = -1
        self._open -= 1

    def _drop_oldest_idle(self) -> bool:
        oldest: Connection | None = None
        for conns in self._idle.values():
            for conn in conns:
                if oldest is None or conn.idle_since < oldest.idle_since or conn.closed:
                    oldest = conn
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        self._drop(oldest)
        return True

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when released."""
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                self._drop(conn)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("Session is closed"))

"""A lean HTTP/1.1 client for the completion calls: keep-alive connections over an ``asyncio.Protocol``.

Why: the completion call is on every agent turn, and aiohttp's request and response machinery is
most of its CPU (measured in-process against the fake provider, one streamed call: aiohttp 0.50 ms,
this client 0.35 ms, a bare protocol writing the request and waiting for the last chunk 0.23 ms;
each SSE chunk passes ~8 Python calls in aiohttp's stream reader). A call through a proxy still goes
over aiohttp (``HTTPPool.session``). This module is one connection and its response parser; the pool
of kept-alive connections is ``h1pool.py``.

What it does, as the aiohttp session did: one POST at a time per connection, kept alive and reused
(idle ones dropped after ``KEEPALIVE_SECS``), at most ``max_connections`` open; no cookies, no
redirects followed (a 3xx is returned as is); ``Accept-Encoding: gzip, deflate`` with those bodies
decoded; response header lines up to ``MAX_HEADER_BYTES`` and at most ``MAX_HEADERS`` fields; the
body framed by ``Transfer-Encoding: chunked``, ``Content-Length`` or the end of the connection; a
reader that falls behind pauses the socket. Timeouts (an ``aiohttp.ClientTimeout``): ``connect``
bounds waiting for a free connection and connecting, ``sock_connect`` the TCP/TLS connect,
``sock_read`` the silence between two reads of the socket (the header wait included). Failures raise
aiohttp's own exception types (``ServerDisconnectedError``, ``ClientPayloadError``,
``SocketTimeoutError``, ``ConnectionTimeoutError``, ``ClientConnectionError``), so the drivers map them
exactly as before.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

KEEPALIVE_SECS = 30.0
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 128
HIGH_WATER = 256 * 1024  # buffered body bytes at which reading the socket pauses
_HEAD, _BODY, _DONE = 1, 2, 3
_LENGTH, _CHUNKED, _UNTIL_CLOSE = 1, 2, 3
_SIZE, _DATA, _DATA_END, _TRAILER = 1, 2, 3, 4
_NO_BODY_STATUS = (204, 304)
_HEX_DIGITS = b"0123456789abcdefABCDEF"


def _bad(message: str) -> aiohttp.ClientPayloadError:
    return aiohttp.ClientPayloadError(f"malformed HTTP response: {message}")


class Connection(asyncio.Protocol):
    """One kept-alive connection and the parser of the response it is reading."""

    def __init__(self, pool: Any, key: tuple[str, str, int]) -> None:
        self.pool = pool  # the h1pool.H1Pool that made it
        self.key = key
        self.loop = pool.loop
        self.transport: Any = None
        self.closed = False
        self.sending = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.phase = 0  # 0: no request; _HEAD, _BODY, _DONE
        self.head = bytearray()  # the response head as it arrives
        self.scanned = 0  # how far head was searched for its end already
        self.buf = b""  # body bytes not parsed yet
        self.status = 0
        self.headers: CIMultiDictProxy[str] | None = None
        self.reusable = False
        self.framing = 0
        self.remaining = 0
        self.chunk_state = _SIZE
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.exc: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_data = 0.0
        self.decoder: Any = None

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.sending = True  # a long request body is still going out

    def resume_writing(self) -> None:
        # The body is (nearly) out: the silence of the peer counts from now, as aiohttp starts its
        # sock_read timer once the body is written.
        self.sending = False
        self.last_data = self.loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        phase = self.phase
        if phase == _BODY and self.framing == _UNTIL_CLOSE and self.exc is None:
            self._finish()
        elif phase in (_HEAD, _BODY) and self.exc is None:
            self.exc = (aiohttp.ServerDisconnectedError() if phase == _HEAD
                        else aiohttp.ClientPayloadError("Response payload is not completed"))
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.phase not in (_HEAD, _BODY) or self.exc is not None:
            self.reusable = False  # bytes nobody asked for: never reuse this connection
            if self.phase == 0:
                self.close()
            return
        try:
            if self.phase == _HEAD:
                self.head += data  # a bytearray: a head arriving in many small reads stays linear
                if not self._parse_head():
                    return
            else:
                self.buf = self.buf + data if self.buf else data
            self._parse_body()
        except aiohttp.ClientPayloadError as exc:
            self.exc = exc
            self.close()
        self._wake()

    # -- parsing -----------------------------------------------------------------------------------
    def _parse_head(self) -> bool:
        """True once a final (non-1xx) status line and its headers are parsed."""
        while True:
            head = self.head
            end = head.find(b"\r\n\r\n", self.scanned)
            if end < 0:
                if len(head) > MAX_HEADER_BYTES * (MAX_HEADERS + 1):
                    raise _bad("header block too long")
                self.scanned = max(0, len(head) - 3)
                return False
            lines = bytes(head[:end]).split(b"\r\n")
            self.buf = bytes(head[end + 4:])
            self.head = bytearray(self.buf)
            self.scanned = 0
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
                raise _bad("bad status line")
            status = int(parts[1])
            if len(lines) - 1 > MAX_HEADERS:
                raise _bad("too many headers")
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                if len(line) > MAX_HEADER_BYTES:
                    raise _bad("header line too long")
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip():
                    raise _bad("bad header line")
                headers.add(name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.status = status
            self.headers = CIMultiDictProxy(headers)
            connection = headers.get("connection", "").lower()
            self.reusable = parts[0] == b"HTTP/1.1" and "close" not in connection
            encoding = headers.get("content-encoding", "").strip().lower()
            if encoding in ("gzip", "x-gzip"):
                self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                self.decoder = zlib.decompressobj()
            elif encoding not in ("", "identity"):
                raise _bad(f"content-encoding {encoding!r} was not asked for")
            transfer = headers.get("transfer-encoding", "").lower()
            if status in _NO_BODY_STATUS:
                self.framing, self.remaining = _LENGTH, 0
            elif "chunked" in transfer:
                self.framing = _CHUNKED
            elif "content-length" in headers:
                length = headers["content-length"].strip()
                if not length.isdigit():
                    raise _bad("bad content-length")
                self.framing, self.remaining = _LENGTH, int(length)
            else:
                self.framing, self.reusable = _UNTIL_CLOSE, False
            self.phase = _BODY
            self.head = bytearray()
            return True

    def _parse_body(self) -> None:
        framing = self.framing
        buf = self.buf
        if framing == _LENGTH:
            if buf:
                take = buf[:self.remaining]
                self.remaining -= len(take)
                self.buf = buf[len(take):]
                if take:
                    self._push(take)
            if self.remaining == 0:
                if self.buf:
                    self.reusable = False  # more than the body: do not trust this connection again
                self._finish()
            return
        if framing == _UNTIL_CLOSE:
            self.buf = b""
            if buf:
                self._push(buf)
            return
        pos, size = 0, len(buf)
        state = self.chunk_state
        pieces: list[bytes] = []  # this read's chunk data, handed over in one piece
        finished = False
        while pos < size:
            if state == _SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > MAX_HEADER_BYTES:
                        raise _bad("chunk size line too long")
                    break
                text = buf[pos:end].split(b";", 1)[0].strip()
                if not text or len(text) > 16 or text.strip(_HEX_DIGITS):
                    raise _bad("bad chunk size")
                self.remaining = int(text, 16)
                pos = end + 2
                state = _DATA if self.remaining else _TRAILER
            elif state == _DATA:
                take = buf[pos:pos + self.remaining]
                pos += len(take)
                self.remaining -= len(take)
                pieces.append(take)
                if self.remaining == 0:
                    state = _DATA_END
            elif state == _DATA_END:
                if size - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise _bad("chunk not ended by CRLF")
                pos += 2
                state = _SIZE
            else:  # trailer fields, up to an empty line
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > MAX_HEADER_BYTES:
                        raise _bad("trailer line too long")
                    break
                finished = end == pos
                pos = end + 2
                if finished:
                    break
        self.chunk_state = state
        self.buf = buf[pos:]
        if pieces:
            self._push(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if finished:
            if self.buf:
                self.reusable = False  # more than the body: do not trust this connection again
            self._finish()

    def _push(self, data: bytes) -> None:
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except zlib.error:
                raise _bad("cannot decode the compressed body") from None
            if not data:
                return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _finish(self) -> None:
        if self.decoder is not None:
            tail = self.decoder.flush()
            self.decoder = None
            if tail:
                self.chunks.append(tail)
        self.phase = _DONE

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- reading -----------------------------------------------------------------------------------
    async def _wait(self, idle: float | None) -> None:
        """Until the parser has something new; ``idle`` bounds the silence of the socket (measured from
        the last bytes received, or from when a long request body was out)."""
        loop = self.loop
        waiter = self.waiter = loop.create_future()
        if not idle:
            await waiter
            return
        self.timer = loop.call_at(self.last_data + idle, self._check_silence, waiter, idle)
        try:
            await waiter
        finally:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _check_silence(self, waiter: asyncio.Future[None], idle: float) -> None:
        if waiter.done():
            return
        now = self.loop.time()
        due = now + idle if self.sending else self.last_data + idle
        if now < due:  # the body is still going out, or it went out since the timer was set
            self.timer = self.loop.call_at(due, self._check_silence, waiter, idle)
            return
        self.timer = None
        if self.exc is None:
            self.exc = aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        self.close()
        self.waiter = None
        waiter.set_result(None)

    async def read_head(self, idle: float | None) -> None:
        """Until the status line and headers of the final response arrived."""
        while self.phase == _HEAD:
            if self.exc is not None:
                raise self.exc
            await self._wait(idle)

    async def read(self, idle: float | None) -> bytes:
        """The body bytes received since the last read (``b""`` at its end)."""
        while True:
            chunks = self.chunks
            if chunks:
                self.chunks = []
                self.buffered = 0
                if self.paused and self.transport is not None and not self.closed:
                    self.paused = False
                    self.transport.resume_reading()
                    # the peer could not send while paused: its silence counts from now (as aiohttp's
                    # sock_read stops while the reader holds the transport)
                    self.last_data = self.loop.time()
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self.exc is not None:
                raise self.exc
            if self.phase == _DONE:
                return b""
            await self._wait(idle)

    def usable(self, now: float) -> bool:
        """An idle connection may carry the next request: open, not closing, not idle for too long."""
        return not self.closed and not self.transport.is_closing() and now - self.idle_since < KEEPALIVE_SECS

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class Body:
    """``response.content``: the body as it arrives (``iter_any()``, as aiohttp's stream reader)."""

    __slots__ = ("_conn", "_idle")

    def __init__(self, conn: Connection, idle: float | None) -> None:
        self._conn = conn
        self._idle = idle

    def iter_any(self) -> Body:
        return self

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        data = await self._conn.read(self._idle)
        if not data:
            raise StopAsyncIteration
        return data


class Response:
    """The subset of ``aiohttp.ClientResponse`` the drivers use: ``status``, ``headers``, ``content``
    (``iter_any()``) and ``release()`` (the connection back to the pool when the body was read to its
    end, closed otherwise)."""

    __slots__ = ("status", "headers", "content", "_conn")

    def __init__(self, conn: Connection, idle: float | None) -> None:
        self._conn: Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers
        self.content = Body(conn, idle)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.release(conn)

    close = release

"""A lean HTTP/1.1 client for the completion calls: keep-alive connections over an ``asyncio.Protocol``.

Why: the completion call is on every agent turn, and aiohttp's request and response machinery is
most of its CPU (measured in-process against the fake provider, one streamed call: aiohttp 0.50 ms,
this client 0.35 ms, a bare protocol writing the request and waiting for the last chunk 0.23 ms;
each SSE chunk passes ~8 Python calls in aiohttp's stream reader). A call through a proxy still goes
over aiohttp (``HTTPPool.session``). This module is one connection reading its responses; the pool
of kept-alive connections is ``h1pool.py``. The response is parsed by llhttp, Node's HTTP parser, through
``httptools`` (the binding uvicorn uses): status line, header fields, Content-Length / chunked /
until-close framing, chunk sizes and trailers are its work, strictly (bare LF line ends, both
Content-Length and Transfer-Encoding, a duplicate Content-Length are refused); this module adds what
llhttp leaves to its user: size and count limits, 1xx answers skipped, the end of an until-close body
at the end of the connection, content decoding, flow control and timeouts.

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
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# The same keep-alive expiry and header-line bound as the aiohttp session used for proxied calls.
from librefang_providers.drivers.transport import KEEPALIVE_SECS, MAX_HEADER_BYTES

MAX_HEADERS = 128
MAX_HEAD_BYTES = MAX_HEADER_BYTES * (MAX_HEADERS + 1)  # a response head, interim answers included
HIGH_WATER = 256 * 1024  # buffered body bytes at which reading the socket pauses
_HEAD, _BODY, _DONE = 1, 2, 3


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
        # the parser hands each piece of body straight to this list (its append is the callback)
        self.pieces: list[bytes] = []
        self.on_body = self.pieces.append
        self._reset()

    def _reset(self) -> None:
        self.phase = 0  # 0: no request; _HEAD, _BODY, _DONE
        # llhttp (through httptools) frames the response: status line, headers, Content-Length /
        # chunked / until-close bodies, chunk sizes and trailers; a new parser for every response
        self.parser = httptools.HttpResponseParser(self)
        self.fields: list[tuple[bytes, bytes]] = []  # the header fields of the head being read
        # llhttp sets no size limit and httptools gathers a header line split over reads by
        # concatenation: bytes received in reads where the parser got no further (no header line, no
        # body) are one line being dripped, bounded by MAX_HEADER_BYTES; the head by MAX_HEAD_BYTES
        self.stalled = 0
        self.head_bytes = 0
        self.progress = False  # a header line, the end of a head or of the response in this read
        self.complete = False  # the parser saw the end of the final response
        self.interim = False  # the head being read is a 1xx answer
        self.until_close = False  # the body ends when the connection does
        self.error: aiohttp.ClientPayloadError | None = None  # raised by a parser callback
        self.status = 0
        self.headers: CIMultiDictProxy[str] | None = None
        self.reusable = False
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
        # llhttp is never told about the end of the stream: a body framed by it is complete here
        if phase == _BODY and self.until_close and self.exc is None:
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
        pieces = self.pieces
        self.progress = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self.complete:
                pieces.clear()
                self.exc = self.error or _bad(str(exc))
                self.close()
                self._wake()
                return
            # bytes after the end of the response (or after its "Connection: close"): the response
            # stands, the connection is not trusted again
            self.reusable = False
        try:
            if self.phase == _HEAD:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    raise _bad("header block too long")
            if pieces or self.progress:
                self.stalled = 0
            else:
                self.stalled += len(data)
                if self.stalled > MAX_HEADER_BYTES:
                    raise _bad("header line too long" if self.phase == _HEAD else "chunk framing too long")
            if pieces:
                self._push(pieces[0] if len(pieces) == 1 else b"".join(pieces))
                pieces.clear()
        except aiohttp.ClientPayloadError as exc:
            pieces.clear()
            self.exc = exc
            self.close()
        else:
            if self.complete:
                self._finish()
        self._wake()

    # -- parser callbacks (httptools) --------------------------------------------------------------
    def _fail(self, message: str) -> aiohttp.ClientPayloadError:
        self.error = _bad(message)
        return self.error

    def on_message_begin(self) -> None:
        if self.complete:  # a second response after the one asked for: stop there
            raise self._fail("more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_HEADER_BYTES:
            raise self._fail("header line too long")
        self.progress = True
        if self.phase == _HEAD:  # fields after the body are trailers: read past, not kept
            fields = self.fields
            if len(fields) >= MAX_HEADERS:
                raise self._fail("too many headers")
            fields.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        fields, self.fields = self.fields, []
        self.progress = True
        if status < 200:
            if status == 101:
                raise self._fail("unexpected protocol switch")
            for name, value in fields:  # an interim answer has no body (llhttp would read one)
                if name.lower() == b"transfer-encoding" or (name.lower() == b"content-length" and value.strip() != b"0"):
                    raise self._fail("interim answer with a body")
            self.interim = True  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in fields:
            headers.add(name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self.reusable = parser.should_keep_alive()
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.decoder = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise self._fail(f"content-encoding {encoding!r} was not asked for")
        # what llhttp does without a length: a transfer coding not ending in chunked, or neither
        # header, is a body up to the end of the connection (204/304 have none and finish at once)
        transfer = headers.getall("transfer-encoding", None)
        if transfer is not None:  # the last coding of the last field decides, as for llhttp
            self.until_close = transfer[-1].rsplit(",", 1)[-1].strip().lower() != "chunked"
        else:
            self.until_close = "content-length" not in headers
        self.phase = _BODY

    def on_message_complete(self) -> None:
        self.progress = True
        if self.interim:
            self.interim = False
            return
        self.complete = True

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

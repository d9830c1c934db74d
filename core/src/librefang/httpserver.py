"""Hypercorn's asyncio server, minus per-request work its connections do for nothing.

Hypercorn (0.18) arms a connection's keep-alive idle timeout with a task per idle period: after
every response it starts a task that waits (``asyncio.wait_for``: a second task and a timer) for
the keep-alive timeout or the server's termination, and the next request cancels both. That is
two tasks, their cancellation and about eight event-loop callbacks per request on a keep-alive
connection. :class:`IdleTimer` keeps the same rule with one ``loop.call_later`` handle: an idle
connection is closed after ``keep_alive_timeout`` seconds, or at once when the server terminates
(:func:`serve_http` expires every idle timer then, as Hypercorn's task did on its ``terminated``
event).

Each request's ASGI task also runs the app without Hypercorn's per-request WSGI helpers (a
``functools.partial`` and a closure that only a WSGI app uses): :func:`serve_http` serves an ASGI
app.

On HTTP/1.1 (:class:`EdgeH11Protocol`, h11 0.16), a response's header block is checked by h11's
own rules once per distinct ``(name, value)`` pair, not on every response (h11 runs two regexes
per header; most of the daemon's headers never change), and the header block of a response with
a ``Content-Length`` goes out in one socket write with the first part of its body (Hypercorn
wrote them separately: two sends, two TCP segments on every response). A streamed response
(chunked: SSE) still has its headers sent at once.

Measured (the daemon's app, core only, a keep-alive client on the same loop, function calls per
request with ``sys.setprofile``): ``GET /api/health`` 1187 → 858 and a JSON ``POST`` 1361 → 1003,
with the changes of :mod:`librefang.quartapp`, :mod:`librefang.routing` and :mod:`librefang.jsonbody`;
event-loop callbacks per no-tool agent turn 26.7 → 16.2.

Everything else (h11's state machine and framing, HTTP/2 upgrade, the stream state machine,
access logging, graceful shutdown) is Hypercorn's and h11's own code. The classes here subclass
the versions they were written against; with any other Hypercorn :func:`serve_http` is
Hypercorn's own ``serve``, and with any other h11 the HTTP/1.1 protocol is Hypercorn's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from time import time
from typing import Any

log = logging.getLogger("librefang.server")

SUPPORTED_HYPERCORN = ("0.18.",)  # the versions whose TCPServer.run and task group this mirrors
SUPPORTED_H11 = ("0.16.",)  # the versions whose header normalisation EdgeH11Protocol reuses
VALID_HEADERS_SIZE = 512  # distinct (name, value) pairs remembered as valid; cleared when full
UNREMEMBERED = frozenset({b"x-request-id"})  # a new value on every response
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def lean_server_supported() -> bool:
    """True when the installed Hypercorn is one :class:`EdgeTCPServer` was written against."""
    try:
        return version("hypercorn").startswith(SUPPORTED_HYPERCORN)
    except Exception:  # noqa: BLE001 - no metadata: do not guess
        return False


def lean_h11_supported() -> bool:
    """True when the installed h11 is one :class:`EdgeH11Protocol` was written against."""
    try:
        return version("h11").startswith(SUPPORTED_H11)
    except Exception:  # noqa: BLE001 - no metadata: do not guess
        return False


class ValidHeaders:
    """What a response's ASGI headers become on their way out: Hypercorn's checks
    (``build_and_validate_headers``: bytes, stripped, no pseudo-header) then h11's normalisation
    (``normalize_and_validate``), remembering each pair that passed.

    Both handle each pair on its own except for two checks across pairs in h11: one Content-Length
    value and one Transfer-Encoding. A block where either name occurs more than once is handed to
    both whole, so every block gets exactly their answer (the same items, or the same error)."""

    def __init__(self) -> None:
        from h11._headers import Headers, normalize_and_validate
        from h11._headers import _field_value_re as field_value_re
        from hypercorn.utils import build_and_validate_headers

        self._headers_class = Headers
        self._normalize = normalize_and_validate
        self._hypercorn = build_and_validate_headers
        self._valid: dict[tuple[bytes, bytes], tuple[bytes, bytes, bytes]] = {}
        # Names whose values are not remembered (UNREMEMBERED) → their checked (raw, lowercased)
        # form; h11's own pattern for a value then decides for the value alone.
        self._names: dict[bytes, tuple[bytes, bytes]] = {}
        self._value_re = field_value_re

    def _check(self, pair: Any) -> tuple[bytes, bytes, bytes]:
        return self._normalize(self._hypercorn([pair]))._full_items[0]  # type: ignore[no-any-return]

    def _check_unremembered(self, pair: Any) -> tuple[bytes, bytes, bytes]:
        # A value h11's pattern accepts has no surrounding whitespace (Hypercorn's strip changes
        # nothing) and passes h11; anything else takes the full path, for the exact error.
        name, value = pair
        known = self._names.get(name)
        if known is not None and type(value) is bytes and self._value_re.fullmatch(value) is not None:
            return known[0], known[1], value
        item = self._check(pair)
        if type(name) is bytes:
            self._names[name] = (item[0], item[1])
        return item

    def __call__(self, headers: list[Any]) -> tuple[Any, bool]:
        """The h11 ``Headers`` of ``headers`` (raises Hypercorn's ``ValueError`` or h11's
        ``LocalProtocolError`` for a bad one), and whether the body is sized: a Content-Length
        and no Transfer-Encoding (which h11 would use instead)."""
        valid = self._valid
        items = []
        framing = 0
        sized = chunked = False
        for pair in headers:
            try:
                item = valid.get(pair)
            except TypeError:  # not hashable (e.g. a bytearray): checked, not remembered
                item = self._check(pair)
            if item is None:
                if pair[0] in UNREMEMBERED:
                    items.append(self._check_unremembered(pair))
                    continue
                item = self._check(pair)
                if item[1] not in UNREMEMBERED:
                    if len(valid) >= VALID_HEADERS_SIZE:
                        valid.clear()
                    valid[pair] = item
            if item[1] in FRAMING:
                framing += 1
                if item[1] == b"content-length":
                    sized = True
                else:
                    chunked = True
            items.append(item)
        if framing > 1:
            return self._normalize(self._hypercorn(headers)), sized and not chunked
        return self._headers_class(items), sized and not chunked


async def _run_app(app: Any, config: Any, scope: Any, receive: Any, send: Any) -> None:
    """Hypercorn's per-request ``_handle`` for an ASGI app (no WSGI helpers to build)."""
    try:
        await app(scope, receive, send)
    except asyncio.CancelledError:
        raise
    except Exception:
        await config.log.exception("Error in ASGI Framework")
    finally:
        await send(None)


class IdleTimers:
    """The armed idle timers of one server, so termination can close every idle connection."""

    def __init__(self) -> None:
        self.armed: set[IdleTimer] = set()

    def expire_all(self) -> None:
        """Close every idle connection now (the server is terminating)."""
        for timer in list(self.armed):
            timer.expire()


class IdleTimer:
    """A connection's keep-alive idle timeout (Hypercorn's ``SingleTask`` interface): ``restart``
    arms it, ``stop`` disarms it; when it fires the connection is closed as Hypercorn closes it."""

    __slots__ = ("_connection", "_timers", "_handle")

    def __init__(self, connection: Any, timers: IdleTimers) -> None:
        self._connection = connection
        self._timers = timers
        self._handle: asyncio.TimerHandle | None = None

    async def restart(self, task_group: Any, action: Callable[..., Any]) -> None:
        """Arm the timer (the connection is idle); ``action`` is Hypercorn's idle task, not needed."""
        self._disarm()
        connection = self._connection
        if connection.context.terminated.is_set():
            self.expire()
            return
        self._handle = connection.loop.call_later(connection.config.keep_alive_timeout, self.expire)
        self._timers.armed.add(self)

    async def stop(self) -> None:
        """Disarm the timer (a request arrived, or the connection is closing)."""
        self._disarm()

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._timers.armed.discard(self)

    def expire(self) -> None:
        """Close the idle connection (in its task group, as Hypercorn's idle task did)."""
        self._disarm()
        connection = self._connection
        try:
            connection._task_group.spawn(connection._initiate_server_close)
        except (AttributeError, RuntimeError):
            pass  # the connection's task group has finished: it is closing already


def _classes() -> tuple[type, type, type]:
    """The Hypercorn subclasses (imported on first use: Hypercorn is not needed to build an app)."""
    import h11
    from hypercorn.asyncio.task_group import TaskGroup
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.events import RawData
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.protocol.events import Body, Request, Response
    from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import parse_socket_addr

    valid_headers = ValidHeaders() if lean_h11_supported() else None  # else: Hypercorn's H11Protocol

    class EdgeHTTPStream(HTTPStream):
        """Hypercorn's HTTP stream, leaving a response's header checks to :class:`EdgeH11Protocol`
        (which makes Hypercorn's, remembered: :class:`ValidHeaders`)."""

        async def app_send(self, message: Any) -> None:
            if (message is not None and message["type"] == "http.response.start"
                    and self.state == ASGIHTTPState.REQUEST and int(message["status"]) >= 200):
                self.response = message
                await self.send(Response(stream_id=self.stream_id, headers=message.get("headers", []),
                                         status_code=int(message["status"])))
                self.state = ASGIHTTPState.RESPONSE
                return
            await super().app_send(message)

    class EdgeH11Protocol(H11Protocol):
        """Hypercorn's HTTP/1.1 protocol with remembered header checks and one write for the
        header block and the start of a sized body (see the module docstring)."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self._held: bytes | None = None  # a sized response's header block, until its body
            self._plain = True  # the request being read has no Upgrade header
            self._extra: tuple[int, list[tuple[bytes, bytes]]] = (-1, [])  # (second, config headers)

        async def _check_protocol(self, event: Any) -> None:
            # Hypercorn's check for an HTTP/2 upgrade, which only a request with an Upgrade header
            # or the HTTP/2 preface can need; h11 gives names lowercased (and values stripped).
            self._plain = True
            for _, name, _value in event.headers._full_items:
                if name == b"upgrade":
                    self._plain = False
                    break
            if not self._plain or event.method == b"PRI":
                await super()._check_protocol(event)

        async def _create_stream(self, request: Any) -> None:
            if not self._plain:  # an upgrade (WebSocket...): Hypercorn's own choice of stream
                await super()._create_stream(request)
                return
            # Hypercorn's _create_stream for a request without an Upgrade header.
            self.stream = EdgeHTTPStream(
                self.app, self.config, self.context, self.task_group, self.ssl, self.client,
                self.server, self.stream_send, STREAM_ID,
            )
            if self.config.h11_pass_raw_headers:
                headers = request.headers.raw_items()
            else:
                headers = [(name, value) for _, name, value in request.headers._full_items]
            await self.stream.handle(
                Request(
                    stream_id=STREAM_ID, headers=headers, http_version=request.http_version.decode(),
                    method=request.method.decode("ascii").upper(), raw_path=request.target,
                    state=self.connection_state,
                )
            )
            self.keep_alive_requests += 1
            await self.context.mark_request()

        def _server_headers(self) -> list[tuple[bytes, bytes]]:
            # Hypercorn's config headers (the Date, to the second), built once a second.
            second = int(time())
            if self._extra[0] != second:
                self._extra = (second, self.config.response_headers("h11"))
            return self._extra[1]

        def _h11_bytes(self, event: Any) -> bytes | None:
            # Hypercorn's _send_h11_event, returning the bytes instead of sending them.
            try:
                return self.connection.send(event)  # type: ignore[no-any-return]
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
                return None

        async def stream_send(self, event: Any) -> None:
            held = self._held
            if held is not None:
                self._held = None
                if type(event) is Body:
                    try:
                        data = self._h11_bytes(h11.Data(data=event.data))
                    except BaseException:  # e.g. more body than declared: the header block still goes
                        await self.send(RawData(data=held))
                        raise
                    await self.send(RawData(data=held if data is None else held + data))
                    return
                await self.send(RawData(data=held))
            if type(event) is not Response or event.status_code < 200:
                await super().stream_send(event)
                return
            headers = [*event.headers, *self._server_headers()]
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            checked, sized = valid_headers(headers)
            data = self._h11_bytes(h11.Response(headers=checked, status_code=event.status_code))
            if data is None:
                return
            if sized:
                self._held = data  # its body follows at once; an empty one ends with EndBody
            else:
                await self.send(RawData(data=data))

    class EdgeProtocolWrapper(ProtocolWrapper):
        """Hypercorn's protocol choice, with :class:`EdgeH11Protocol` for HTTP/1.1."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            if type(self.protocol) is H11Protocol and valid_headers is not None:
                self.protocol = EdgeH11Protocol(
                    self.app, self.config, self.context, self.task_group, self.state, self.ssl,
                    self.client, self.server, self.send,
                )

    class EdgeTaskGroup(TaskGroup):
        """Hypercorn's connection task group, spawning each request's app task without the WSGI helpers."""

        async def spawn_app(self, app: Any, config: Any, scope: Any, send: Any) -> Any:
            app_queue: asyncio.Queue[Any] = asyncio.Queue(config.max_app_queue_size)
            self._task_group.create_task(_run_app(app, config, scope, app_queue.get, send))
            return app_queue.put

    class EdgeTCPServer(TCPServer):
        """Hypercorn's TCP connection with an :class:`IdleTimer` and an :class:`EdgeTaskGroup`."""

        def __init__(self, *args: Any, timers: IdleTimers) -> None:
            super().__init__(*args)
            self.idle_task = IdleTimer(self, timers)

        async def run(self) -> None:
            # Hypercorn 0.18's TCPServer.run, with the task group above.
            socket = self.writer.get_extra_info("socket")
            try:
                client = parse_socket_addr(socket.family, socket.getpeername())
                server = parse_socket_addr(socket.family, socket.getsockname())
                ssl_object = self.writer.get_extra_info("ssl_object")
                if ssl_object is not None:
                    ssl = True
                    alpn_protocol = ssl_object.selected_alpn_protocol()
                else:
                    ssl = False
                    alpn_protocol = "http/1.1"
                async with EdgeTaskGroup(self.loop) as task_group:
                    self._task_group = task_group
                    self.protocol = EdgeProtocolWrapper(
                        self.app, self.config, self.context, task_group, ConnectionState(self.state),
                        ssl, client, server, self.protocol_send, alpn_protocol,
                    )
                    await self.protocol.initiate()
                    await self.idle_task.restart(task_group, self._idle_timeout)
                    await self._read_data()
            except OSError:
                pass
            finally:
                await self._close()

        async def _close(self) -> None:
            # Disarmed first: a timer firing while the socket closes would spawn into a finished task group.
            await self.idle_task.stop()
            await super()._close()

        async def protocol_send(self, event: Any) -> None:
            if type(event) is RawData and not event.data:
                return  # h11's end of a sized body: nothing to write (Hypercorn wrote b"" and drained)
            await super().protocol_send(event)

    return EdgeTaskGroup, EdgeTCPServer, EdgeH11Protocol


async def serve_http(app: Any, config: Any, *, shutdown_trigger: Callable[[], Awaitable[Any]]) -> None:
    """Serve the ASGI ``app`` on ``config.bind`` (plain TCP) until ``shutdown_trigger`` returns,
    then shut down gracefully as Hypercorn does (idle connections closed at once, the others given
    ``config.graceful_timeout`` seconds). Hypercorn's own ``serve`` when the lean server does not
    support the installed Hypercorn, or the config asks for what it does not do (TLS, QUIC, a
    request cap per worker)."""
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.utils import repr_socket_addr

    if not lean_server_supported() or config.ssl_enabled or config.max_requests is not None or config.quic_bind:
        from hypercorn.asyncio import serve

        await serve(app, config, shutdown_trigger=shutdown_trigger)
        return
    _, server_class, _ = _classes()
    loop = asyncio.get_running_loop()
    sockets = config.create_sockets()
    context = WorkerContext(None)
    timers = IdleTimers()
    lifespan_state: dict[str, Any] = {}
    connections: set[asyncio.Task[Any]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        await server_class(app, loop, config, context, lifespan_state, reader, writer, timers=timers)

    servers = []
    try:
        for sock in sockets.insecure_sockets:
            servers.append(await asyncio.start_server(on_connection, backlog=config.backlog, sock=sock))
            await config.log.info(f"Running on http://{repr_socket_addr(sock.family, sock.getsockname())} (CTRL + C to quit)")
        await shutdown_trigger()
    finally:
        await context.terminated.set()
        timers.expire_all()
        for server in servers:
            server.close()
            await server.wait_closed()
        if connections:
            gathered = asyncio.gather(*connections)
            try:
                await asyncio.wait_for(gathered, config.graceful_timeout)
            except TimeoutError:
                pass
            finally:
                if gathered.done() and not gathered.cancelled():
                    gathered.exception()  # retrieved, so asyncio does not warn about it

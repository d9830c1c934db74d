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
app. Everything else (h11, HTTP/2 upgrade, the stream state machine, access logging, graceful
shutdown) is Hypercorn's own code. The classes here subclass the Hypercorn version they were
written against; with any other version :func:`serve_http` is Hypercorn's own ``serve``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

log = logging.getLogger("librefang.server")

SUPPORTED_HYPERCORN = ("0.18.",)  # the versions whose TCPServer.run and task group this mirrors


def lean_server_supported() -> bool:
    """True when the installed Hypercorn is one :class:`EdgeTCPServer` was written against."""
    try:
        return version("hypercorn").startswith(SUPPORTED_HYPERCORN)
    except Exception:  # noqa: BLE001 - no metadata: do not guess
        return False


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


def _classes() -> tuple[type, type]:
    """The Hypercorn subclasses (imported on first use: Hypercorn is not needed to build an app)."""
    from hypercorn.asyncio.task_group import TaskGroup
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import parse_socket_addr

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
                    self.protocol = ProtocolWrapper(
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

    return EdgeTaskGroup, EdgeTCPServer


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
    _, server_class = _classes()
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

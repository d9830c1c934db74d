"""Serving: Hypercorn (through :mod:`librefang.httpserver`) in front of an ASGI switch that forwards
to the current app.

Reload builds a new app and swaps it in; requests already dispatched keep running on the app
they started on, so in-flight requests and open sockets finish on the old version.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from librefang.app import build_app
from librefang.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

log = logging.getLogger("librefang.server")


class AppSwitch:
    """An ASGI app that forwards each request (or WebSocket) to whichever app is current.

    It counts the calls still running on each app, so a retired app is shut down only once the
    requests that started on it have finished (:meth:`drained`).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.generation = 0
        self._active: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}

    def swap(self, app: Any) -> Any:
        """Make ``app`` current; returns the previous app (still serving its open requests)."""
        old, self.app = self.app, app
        self.generation += 1
        return old

    def active(self, app: Any) -> int:
        """How many requests are running on ``app``."""
        return self._active.get(id(app), 0)

    async def drained(self, app: Any) -> None:
        """Wait until no request runs on ``app`` (bound the wait with ``asyncio.timeout``)."""
        key = id(app)
        if self._active.get(key):
            await self._idle.setdefault(key, asyncio.Event()).wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the kernel's lifecycle is run by serve(), not by ASGI (this
            # answers Hypercorn's own serve, used when librefang.httpserver does not mirror its version)
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        app = self.app
        key = id(app)
        self._active[key] = self._active.get(key, 0) + 1
        try:
            await app(scope, receive, send)
        finally:
            left = self._active[key] - 1
            if left:
                self._active[key] = left
            else:
                del self._active[key]
                event = self._idle.pop(key, None)
                if event is not None:
                    event.set()


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the daemon's event loop (``[core] event_loop``): uvloop's (libuv, in C) for
    ``"uvloop"``, or for ``"auto"`` when it is installed; asyncio's own for ``"asyncio"`` (or ``"auto"``
    without uvloop). uvloop runs the same asyncio code with less CPU per socket event, timer and task
    switch: about 0.7 ms less daemon CPU per agent turn (docs/benchmarks.md)."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError('event_loop = "uvloop", but uvloop is not installed') from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def hypercorn_config(host: str, port: int) -> Any:
    from hypercorn.config import Config as HyperConfig

    config = HyperConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10
    config.keep_alive_timeout = 75
    config.include_server_header = False
    config.h11_max_incomplete_size = 64 * 1024  # caps request line + headers
    return config


async def serve(
    kernel: Kernel,
    host: str,
    port: int,
    *,
    dev: bool = False,
    ready: asyncio.Event | None = None,
    on_started: Any = None,
) -> None:
    """Start the kernel, serve until shutdown is requested, then stop the kernel."""
    from librefang.httpserver import serve_http

    kernel.shutdown_requested = asyncio.Event()
    await kernel.start()
    kernel.listen_url = f"http://{host}:{port}"
    app = build_app(kernel)
    await app.startup()
    switch = AppSwitch(app)
    kernel.state["switch"] = switch
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, kernel.shutdown_requested.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (a daemon in a test thread: uvloop says ValueError), or no signals
    watcher = None
    if dev:
        from librefang.reload import Reloader

        watcher = Reloader(kernel, switch)
        kernel.state["reloader"] = watcher
        watcher.start()
    config = hypercorn_config(host, port)
    server = asyncio.create_task(serve_http(switch, config, shutdown_trigger=kernel.shutdown_requested.wait))
    if on_started is not None:
        on_started()
    if ready is not None:
        ready.set()
    try:
        await server
    finally:
        if watcher is not None:
            await watcher.stop()
        try:
            await switch.app.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            log.debug("app shutdown failed", exc_info=True)
        await kernel.stop()


def write_daemon_file(home: Path, payload: dict[str, Any]) -> Path:
    import json
    import os

    path = home / "daemon.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
    return path

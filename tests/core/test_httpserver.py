"""The daemon's Hypercorn server (librefang.httpserver): keep-alive idle connections are closed
after the timeout and at shutdown, busy ones are not, requests on one connection keep working,
shutdown waits for a request in flight; other Hypercorn versions get Hypercorn's own serve."""

from __future__ import annotations

import asyncio
import time

import pytest
from librefang import httpserver
from librefang.server import hypercorn_config
from librefang.testing import free_port


async def asgi_app(scope, receive, send):
    """A tiny ASGI app: ``/slow`` answers after 0.4 s, anything else at once."""
    if scope["type"] != "http":
        return
    message = await receive()
    assert message["type"] == "http.request"
    if scope["path"] == "/slow":
        await asyncio.sleep(0.4)
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Server:
    def __init__(self, keep_alive: float = 30.0) -> None:
        self.port = free_port()
        self.config = hypercorn_config("127.0.0.1", self.port)
        self.config.keep_alive_timeout = keep_alive
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Server:
        self.task = asyncio.create_task(httpserver.serve_http(asgi_app, self.config, shutdown_trigger=self.stop.wait))
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            return self
        raise TimeoutError("the server did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[bytes, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closes the connection (EOF), failing after ``within``."""
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), within) == b""
    return time.monotonic() - started


def test_the_installed_hypercorn_is_the_one_the_lean_server_mirrors():
    # A Hypercorn upgrade makes this fail: re-read TCPServer.run and TaskGroup.spawn_app, then extend
    # SUPPORTED_HYPERCORN (until then the daemon serves through Hypercorn's own serve, still correct).
    assert httpserver.lean_server_supported()


async def test_requests_on_one_keep_alive_connection_and_the_idle_timeout():
    async with Server(keep_alive=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for path in ("/a", "/slow", "/b", "/c"):
            head, body = await get(reader, writer, path)
            assert head.startswith(b"HTTP/1.1 200") and body == path.encode()
        # Idle now: closed after the keep-alive timeout, not before.
        waited = await closed_by_server(reader, 5)
        assert 0.35 <= waited < 3
        writer.close()


async def test_a_request_longer_than_the_idle_timeout_is_not_cut():
    async with Server(keep_alive=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head, body = await get(reader, writer, "/slow")  # 0.4 s: twice the idle timeout
        assert head.startswith(b"HTTP/1.1 200") and body == b"/slow"
        head, body = await get(reader, writer, "/after")
        assert body == b"/after"
        writer.close()


async def test_a_connection_that_never_sends_is_closed_after_the_idle_timeout():
    async with Server(keep_alive=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_by_server(reader, 5) < 3
        writer.close()


async def test_shutdown_closes_idle_connections_at_once_and_lets_a_request_finish():
    server = Server(keep_alive=60)
    async with server:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
        await get(idle_reader, idle_writer, "/warm")
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", server.port)
        busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(0.1)
        started = time.monotonic()
        server.stop.set()
        assert await closed_by_server(idle_reader, 5) < 1  # not after the 60 s keep-alive
        head = await asyncio.wait_for(busy_reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(server.task, 5)
        assert time.monotonic() - started < server.config.graceful_timeout
        idle_writer.close()
        busy_writer.close()


async def test_other_hypercorn_versions_are_served_by_hypercorn(monkeypatch):
    monkeypatch.setattr(httpserver, "lean_server_supported", lambda: False)
    used = []
    from hypercorn import asyncio as hypercorn_asyncio

    real = hypercorn_asyncio.serve

    async def spy(*args, **kwargs):
        used.append(True)
        await real(*args, **kwargs)

    monkeypatch.setattr(hypercorn_asyncio, "serve", spy)
    async with Server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        _, body = await get(reader, writer, "/fallback")
        assert body == b"/fallback"
        writer.close()
    assert used == [True]


@pytest.mark.parametrize("version", ["0.17.3", "0.19.0", "1.0.0"])
def test_versions_not_mirrored_are_refused(monkeypatch, version):
    monkeypatch.setattr(httpserver, "version", lambda name: version)
    assert not httpserver.lean_server_supported()

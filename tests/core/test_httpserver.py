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
    def __init__(self, keep_alive: float = 30.0, app=asgi_app) -> None:
        self.app = app
        self.port = free_port()
        self.config = hypercorn_config("127.0.0.1", self.port)
        self.config.keep_alive_timeout = keep_alive
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Server:
        self.task = asyncio.create_task(httpserver.serve_http(self.app, self.config, shutdown_trigger=self.stop.wait))
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


# ---- HTTP/1.1: remembered header checks, one write for a sized response ----

GOOD_BLOCKS = [
    [(b"content-type", b"application/json"), (b"content-length", b"12"), (b"x-request-id", b"abc")],
    [(b"Content-Type", b"text/plain"), (b"X-Api-Version", b"v1"), (b"transfer-encoding", b"Chunked")],
    [(b"content-length", b"7"), (b"vary", b"Origin")],
    [(b"content-length", b"5"), (b"content-length", b"5")],  # repeated, same value: h11 keeps one
    [(b"content-length", b" 7 "), (bytearray(b"x-from-a-bytearray"), b" padded ")],  # Hypercorn strips
    [(b"x-request-id", b"0b6a4a59-6a3c-4a4e-9d55-1f0f7f3b2c11"), (b"x-request-id", b" padded  value ")],
    [(b"x-request-id", b"\xe9t\xe9 obs-text")],
    [],
]
BAD_BLOCKS = [
    [(b"x-bad", b"new\r\nline")],
    [(b"bad name", b"v")],
    [(b"content-length", b"5"), (b"content-length", b"6")],
    [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"gzip")],
    [(b"content-length", b"abc")],
    [(b"content-length", b"5, 6")],
    [(b":path", b"/")],  # a pseudo-header: Hypercorn's ValueError
    [(b"x-bad", b"tab\tinside\x00")],
    [(b"x-request-id", b"nul\x00inside")],
    [(b"x-request-id", b"line\r\nbreak")],
    [(b"x-request-id", "not-bytes")],
]


def hypercorn_then_h11(block):
    """What Hypercorn 0.18 and h11 do to a response's headers, checked on every response."""
    from h11._headers import normalize_and_validate
    from hypercorn.utils import build_and_validate_headers

    return normalize_and_validate(build_and_validate_headers(block))


@pytest.mark.parametrize("block", GOOD_BLOCKS)
def test_remembered_header_checks_give_hypercorns_and_h11s_items(block):
    valid = httpserver.ValidHeaders()
    for _ in range(2):  # first checked, then remembered
        headers, sized = valid(block)
        assert headers._full_items == hypercorn_then_h11(block)._full_items
        names = {bytes(name).lower() for name, _ in block}
        assert sized == (b"content-length" in names and b"transfer-encoding" not in names)


@pytest.mark.parametrize("block", BAD_BLOCKS)
def test_remembered_header_checks_refuse_what_hypercorn_or_h11_refuses(block):
    valid = httpserver.ValidHeaders()
    valid([(b"content-length", b"5"), (b"x-request-id", b"known")])  # remembered: no effect on a bad block
    with pytest.raises((ValueError, Exception)) as ours:
        valid(block)
    with pytest.raises((ValueError, Exception)) as theirs:
        hypercorn_then_h11(block)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def test_remembered_headers_are_bounded():
    valid = httpserver.ValidHeaders()
    for index in range(httpserver.VALID_HEADERS_SIZE * 3):
        valid([(b"x-item", str(index).encode()), (b"x-request-id", str(index).encode())])
        assert len(valid._valid) <= httpserver.VALID_HEADERS_SIZE
    assert all(name != b"x-request-id" for name, _ in valid._valid)


async def raw_app(scope, receive, send):
    """Answers by path: sized bodies (late, empty, HEAD), a stream, a failure after the start."""
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await STREAM_GATE.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": False})
        return
    if path == "/both":  # both framing headers: h11 sends it chunked, so its headers go at once
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"7"), (b"transfer-encoding", b"chunked")]})
        await STREAM_GATE.wait()
        await send({"type": "http.response.body", "body": b"data: 2", "more_body": False})
        return
    if path == "/overlong":  # more body than its Content-Length: h11 refuses the body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"hello", "more_body": False})
        return
    if path == "/fail":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("the app fails after the start")
    body = b"" if path in ("/empty", "/204") else b"hello"
    status = 204 if path == "/204" else 200
    headers = [(b"content-type", b"text/plain"), (b"x-api-version", b"v1")]
    if status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if path == "/late":
        await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": body, "more_body": False})


STREAM_GATE = asyncio.Event()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lowered = head.lower()
    if b"content-length: " not in lowered:
        return head, b""
    length = int(lowered.split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_sized_responses_go_out_in_one_write_and_streams_start_at_once(monkeypatch):
    writes: list[bytes] = []
    real_write = asyncio.StreamWriter.write

    def counting_write(self, data):
        if self.get_extra_info("sockname")[1] == server.port:  # the server's side only
            writes.append(bytes(data))
        return real_write(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", counting_write)
    server = Server(app=raw_app)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for path, body in (("/sized", b"hello"), ("/late", b"hello"), ("/empty", b""), ("/sized", b"hello")):
            writes.clear()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, got = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and got == body
            assert b"content-type: text/plain\r\nx-api-version: v1\r\ncontent-length: " in head
            assert b"date: " in head
            assert len(writes) == 1 and writes[0] == head + body  # one write: header block and body
        writer.write(b"HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"content-length: 5" in head
        writer.write(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204")
        # A stream (chunked): its header block is sent before its first event exists.
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding: chunked" in head.lower()
        STREAM_GATE.set()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"
        STREAM_GATE.clear()
        writer.write(b"GET /both HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding: chunked" in head.lower() and b"content-length" not in head.lower()
        STREAM_GATE.set()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"7\r\ndata: 2\r\n0\r\n\r\n"
        # An app failing after its start, or sending more than it declared: the header block still
        # goes out (as when Hypercorn sent it on its own), then the connection closes.
        for path in ("/overlong", "/fail"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 10" in head
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def echo_app(scope, receive, send):
    """HTTP: answers the request headers the app was given; WebSocket: accepts and echoes once."""
    if scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["type"] != "http":
        return
    await receive()
    body = repr(scope["headers"]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def test_request_headers_websockets_and_h2c_upgrades_as_with_hypercorn():
    async with Server(app=echo_app) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /h HTTP/1.1\r\nHost: x\r\nX-Two: a\r\nx-two:  b \r\nAccept: */*\r\n\r\n")
        _, body = await read_response(reader)
        assert body == repr([(b"host", b"x"), (b"x-two", b"a"), (b"x-two", b"b"), (b"accept", b"*/*")]).encode()
        writer.close()

        import websockets

        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "echo:hi"

        # An h2c upgrade is still Hypercorn's: 101, then HTTP/2 on the same connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101") and b"upgrade: h2c" in head.lower()
        writer.close()

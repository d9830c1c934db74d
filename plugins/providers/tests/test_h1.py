"""The completion calls' lean HTTP/1.1 client (drivers/h1.py) against a raw asyncio server that answers
with exact bytes: every body framing (length, chunked with extensions and trailers, until close),
gzip/deflate, interim 1xx answers, keep-alive reuse and when not to reuse, malformed or oversized
answers, a silent server, flow control with a slow reader, header injection refused, and TLS with
the CA bundle from SSL_CERT_FILE."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from librefang_providers.api import CompletionRequest, ConnectionFailed, Message, TextDelta, TimedOut
from librefang_providers.drivers import h1
from librefang_providers.drivers.h1pool import H1Pool
from librefang_providers.drivers.openai import OpenAIDriver
from librefang_providers.types import DriverConfig

from .conftest import TEST_KEY

CRLF = "\r\n"
COMPLETION = json.dumps({"id": "c1", "model": "raw-model", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}]}).encode()


def sse(*texts: str) -> bytes:
    events = [json.dumps({"choices": [{"index": 0, "delta": {"content": t}}]}) for t in texts]
    events.append(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    return b"".join(b"data: " + e.encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\nx-trailer: yes\r\n\r\n"


def head(status: int = 200, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Server:
    """Answers the n-th request with ``answers[n]`` (bytes, or a callable returning them); ``close``
    after an answer when the entry is a (bytes, True) pair. Counts connections and keeps requests."""

    def __init__(self, answers: list[Any], tls: ssl.SSLContext | None = None, slow_body: bool = False) -> None:
        self.answers = answers
        self.tls = tls
        self.slow_body = slow_body  # read request bodies 512 KiB at a time, 50 ms apart (~10 MB/s)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://localhost:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = int(raw.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while self.slow_body and length > 0:
                    piece = await reader.readexactly(min(length, 512 * 1024))
                    raw, length = raw + piece, length - len(piece)
                    await asyncio.sleep(0.05)
                raw += await reader.readexactly(length)
                self.requests.append(raw)
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                close = False
                if isinstance(answer, tuple):
                    answer, close = answer
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
                if close:
                    return
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.tls)
        if self.slow_body:  # a fixed small receive buffer: what the client sent is what was read, nearly
            self.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def ask() -> CompletionRequest:
    return CompletionRequest(model="raw-model", messages=[Message("user", "ping")])


@pytest.fixture
async def driver_for() -> AsyncIterator[Callable[..., OpenAIDriver]]:
    made: list[OpenAIDriver] = []

    def make(url: str, **config: Any) -> OpenAIDriver:
        made.append(OpenAIDriver(DriverConfig(provider="raw", base_url=url + "/v1", api_key=TEST_KEY, **config)))
        return made[-1]

    yield make
    for driver in made:
        await driver.aclose()


async def stream_text(driver: OpenAIDriver) -> str:
    return "".join([e.text async for e in driver.stream(ask()) if isinstance(e, TextDelta)])


async def test_every_body_framing_and_encoding(driver_for: Any) -> None:
    deflated = zlib.compress(COMPLETION)
    answers = [
        head(content_length=str(len(COMPLETION))) + COMPLETION,
        head(transfer_encoding="chunked") + chunked(COMPLETION),
        head(content_length=str(len(gzip.compress(COMPLETION))), content_encoding="gzip") + gzip.compress(COMPLETION),
        head(transfer_encoding="chunked", content_encoding="deflate") + chunked(deflated, 3),
        head(content_type="text/event-stream", transfer_encoding="chunked") + chunked(sse("po", "ng"), 1),
        (head(content_type="text/event-stream") + sse("un", "framed"), True),  # until the connection closes
        head(content_length=str(len(COMPLETION))) + COMPLETION,
    ]
    async with Server(answers) as server:
        driver = driver_for(server.url)
        for _ in range(4):
            assert (await driver.complete(ask())).text == "pong"
        assert await stream_text(driver) == "pong"
        assert server.connections == 1  # all kept alive on one connection
        assert await stream_text(driver) == "unframed"
        assert (await driver.complete(ask())).text == "pong"
        assert server.connections == 2  # a body ended by closing cannot be followed on that connection
    first = server.requests[0].decode()
    assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:")
    lowered = first.lower()
    for expected in ("authorization: bearer " + TEST_KEY.lower(), "accept-encoding: gzip, deflate",
                     "user-agent: python/", f"content-length: {len(first.split(CRLF * 2, 1)[1])}"):
        assert expected in lowered


async def test_an_answer_written_one_byte_at_a_time(driver_for: Any) -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n" + head(content_type="text/event-stream", transfer_encoding="chunked")
              + chunked(sse("by", "te"), 5))

    async def trickle(writer: asyncio.StreamWriter) -> None:
        for i in range(len(answer)):
            writer.write(answer[i:i + 1])
            await writer.drain()
            if i % 16 == 0:
                await asyncio.sleep(0)  # let the client read what is there

    async with Server([trickle, trickle]) as server:
        driver = driver_for(server.url)
        assert await stream_text(driver) == "byte"
        assert await stream_text(driver) == "byte" and server.connections == 1


async def test_interim_answers_are_skipped(driver_for: Any) -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
              + head(content_length=str(len(COMPLETION))) + COMPLETION)
    async with Server([answer]) as server:
        assert (await driver_for(server.url).complete(ask())).text == "pong"


async def test_when_a_connection_is_not_reused(driver_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = head(content_length=str(len(COMPLETION))) + COMPLETION
    closing = head(content_length=str(len(COMPLETION)), connection="close") + COMPLETION
    async with Server([closing, closing, ok]) as server:
        driver = driver_for(server.url)
        assert (await driver.complete(ask())).text == "pong"
        assert (await driver.complete(ask())).text == "pong"
        assert server.connections == 2  # "connection: close"
    async with Server([(ok, True), ok]) as server:  # the server drops the idle connection
        driver = driver_for(server.url)
        assert (await driver.complete(ask())).text == "pong"
        await asyncio.sleep(0.05)
        assert (await driver.complete(ask())).text == "pong"
        assert server.connections == 2
    monkeypatch.setattr(h1, "KEEPALIVE_SECS", 0.0)
    async with Server([ok]) as server:  # idle for longer than the keep-alive expiry
        driver = driver_for(server.url)
        assert (await driver.complete(ask())).text == "pong"
        assert (await driver.complete(ask())).text == "pong"
        assert server.connections == 2


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 2x0 Bad\r\n\r\n",
    b"SPDY/9 200 OK\r\n\r\n",
    head(x_long="a" * (h1.MAX_HEADER_BYTES + 1), content_length="0"),
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(h1.MAX_HEADERS + 1)) + b"content-length: 0\r\n\r\n",
    head(transfer_encoding="chunked") + b"zz\r\nabc\r\n0\r\n\r\n",
    head(transfer_encoding="chunked") + b"0x3\r\nabc\r\n0\r\n\r\n",
    head(transfer_encoding="chunked") + b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
    head(transfer_encoding="chunked") + b"3\r\nabcXX0\r\n\r\n",
    head(content_length="3", content_encoding="br") + b"abc",
    (head(content_length="100") + b"cut short", True),
    (b"HTTP/1.1 200", True),
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\nabc" + head(content_length="0"),
    head(transfer_encoding="chunked", content_length="3") + b"3\r\nabc\r\n0\r\n\r\n",  # smuggling shape
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    # chunked by its last Transfer-Encoding field: cut short, it is not an until-close body
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", True),
])
async def test_malformed_or_cut_answers_are_transport_errors(driver_for: Any, answer: Any) -> None:
    async with Server([answer]) as server:
        with pytest.raises(ConnectionFailed):
            await driver_for(server.url).complete(ask())


async def test_a_response_head_as_parsed() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-Multi: a \t\r\nx-multi:b\r\n"
              b"X-Name: caf\xc3\xa9\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello"))
    async with Server([answer]) as server:
        pool = H1Pool(4, None)
        try:
            response = await pool.request(server.url + "/x", b"{}", {}, aiohttp.ClientTimeout(total=5))
            assert response.status == 201
            assert response.headers.getall("x-multi") == ["a", "b"] and response.headers["x-name"] == "café"
            assert b"".join([piece async for piece in response.content.iter_any()]) == b"hello"
            assert "x-trailer" not in response.headers  # trailers are read past, not kept
            response.release()
            assert pool._idle  # kept alive
        finally:
            pool.close()


async def test_bytes_after_the_response_keep_it_but_not_the_connection(driver_for: Any) -> None:
    ok = head(content_length=str(len(COMPLETION))) + COMPLETION
    async with Server([ok + b"HTTP/1.1 200 OK\r\n", ok + b"junk", ok]) as server:
        driver = driver_for(server.url)
        for expected_connections in (1, 2, 3):
            assert (await driver.complete(ask())).text == "pong"
            await asyncio.sleep(0.02)
            assert server.connections == expected_connections


@pytest.mark.parametrize("opening", [
    head(content_length="10")[:-4] + b"\r\nx-long: ",  # a header line that never ends
    head(transfer_encoding="chunked") + b"5;ext=",  # a chunk size line that never ends
])
async def test_a_line_dripped_past_the_limit_is_refused(driver_for: Any, monkeypatch: pytest.MonkeyPatch,
                                                        opening: bytes) -> None:
    # llhttp sets no size limit and a line split over many reads is gathered by httptools: the
    # client counts the bytes of reads that end no line and gives up past MAX_HEADER_BYTES
    monkeypatch.setattr(h1, "MAX_HEADER_BYTES", 1024)

    async def drip(writer: asyncio.StreamWriter) -> None:
        writer.write(opening)
        for _ in range(60):
            await writer.drain()
            await asyncio.sleep(0.005)
            writer.write(b"a" * 100)
        await asyncio.sleep(5)

    async with Server([drip]) as server:
        with pytest.raises(ConnectionFailed, match="too long"):
            await asyncio.wait_for(driver_for(server.url, stream_idle_timeout=3).complete(ask()), 3)


async def test_a_silent_server_times_out_and_a_stall_mid_body_too(driver_for: Any) -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def stalls(writer: asyncio.StreamWriter) -> None:
        part = sse("partial", "more").split(b"\n\n")[0] + b"\n\n"  # one event, then silence mid-body
        writer.write(head(transfer_encoding="chunked") + b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        await asyncio.sleep(5)

    async with Server([silent]) as server:
        with pytest.raises(TimedOut, match="no response in time"):
            await stream_text(driver_for(server.url, stream_idle_timeout=0.3))
    async with Server([stalls]) as server:
        with pytest.raises(TimedOut, match="stream stalled") as info:
            await stream_text(driver_for(server.url, stream_idle_timeout=0.3))
        assert info.value.partial_text == "partial"


async def test_a_long_upload_is_not_a_silent_server(driver_for: Any) -> None:
    # 24 MB take the server ~2.4 s to read, 1 s is the idle limit: as with aiohttp, the silence of
    # the server counts once the body is out of the client (what the kernel still holds, at most a few
    # MB, is read well within the limit)
    async with Server([head(transfer_encoding="chunked") + chunked(sse("got", "it"))], slow_body=True) as server:
        driver = driver_for(server.url, stream_idle_timeout=1.0)
        request = CompletionRequest(model="raw-model", messages=[Message("user", "x" * 24_000_000)])
        got = [e.text async for e in driver.stream(request) if isinstance(e, TextDelta)]
        assert "".join(got) == "gotit" and len(server.requests[0]) > 24_000_000


async def test_a_slow_reader_pauses_the_socket_and_misses_nothing(driver_for: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h1, "HIGH_WATER", 256)
    pieces = [f"{i:05d}" for i in range(3000)]
    body = sse(*pieces)
    async with Server([head(transfer_encoding="chunked") + chunked(body, 1000)]) as server:
        driver = driver_for(server.url)
        got: list[str] = []
        async for event in driver.stream(ask()):
            if isinstance(event, TextDelta):
                got.append(event.text)
                if len(got) % 500 == 0:
                    await asyncio.sleep(0.01)  # the server keeps writing meanwhile
        assert got == pieces


async def test_configured_host_and_content_length_headers(driver_for: Any) -> None:
    async with Server([head(content_length=str(len(COMPLETION))) + COMPLETION]) as server:
        driver = driver_for(server.url)
        driver.config.headers = {"Host": "gateway.example", "Content-Length": "1"}
        assert (await driver.complete(ask())).text == "pong"
    lines = server.requests[0].decode().lower().split(CRLF)
    assert [line for line in lines if line.startswith("host:")] == ["host: gateway.example"]
    assert len([line for line in lines if line.startswith("content-length:")]) == 1
    body = server.requests[0].split(CRLF.encode() * 2, 1)[1]
    assert f"content-length: {len(body)}" in lines


async def test_a_header_with_a_line_break_is_refused_before_sending(driver_for: Any) -> None:
    async with Server([head(content_length="0")]) as server:
        driver = driver_for(server.url)
        driver.config.headers = {"x-evil": "a\r\nx-injected: 1"}
        with pytest.raises(ValueError):
            await driver.complete(ask())
        assert server.requests == []


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost and 127.0.0.1 it signed (openssl CLI)."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return ca, cert, key


async def test_tls_with_the_bundle_from_ssl_cert_file(driver_for: Any, certificates: tuple[Path, Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = certificates
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    answers = [head(content_length=str(len(COMPLETION))) + COMPLETION,
               head(content_type="text/event-stream", transfer_encoding="chunked") + chunked(sse("se", "cure"))]
    async with Server(answers, tls=context) as server:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(ConnectionFailed, match="(?i)certificate"):  # certifi does not know this CA
            await driver_for(server.url).complete(ask())
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        driver = driver_for(server.url)  # a new pool reads the variable
        assert (await driver.complete(ask())).text == "pong"
        assert await stream_text(driver) == "secure"
        assert server.connections == 1  # one kept-alive connection (a refused handshake never reaches the handler)

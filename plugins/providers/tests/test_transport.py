"""The completion calls' HTTP transport (aiohttp, see drivers/transport.py), against a raw asyncio server on
127.0.0.1 that counts connections: keep-alive reuse, the ``max_connections`` bound, no redirect followed,
the response size limit, proxies from the environment, a session made lazily and closed with the
registry, and no aiohttp import before the first call."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from librefang_providers.api import BadResponse, CompletionRequest, LLMRegistry, Message, ProvidersConfig
from librefang_providers.drivers import base, builtin_factory
from librefang_providers.drivers.openai import OpenAIDriver
from librefang_providers.types import DriverConfig

from .conftest import TEST_KEY

COMPLETION = {"id": "c1", "model": "raw-model", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}]}
SSE = (b'data: {"choices":[{"index":0,"delta":{"content":"po"}}]}\n\n'
       b'data: {"choices":[{"index":0,"delta":{"content":"ng"},"finish_reason":"stop"}]}\n\n'
       b"data: [DONE]\n\n")


def reply(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "content-type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer:
    """Answers each request with ``answer(method, target, body)``; counts connections (open and at most)."""

    def __init__(self, answer: Callable[[str, str, dict[str, Any]], bytes], delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.targets: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while line := await reader.readline():
                method, target, _ = line.decode().split(" ", 2)
                length = 0
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                self.targets.append(target)
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(self.answer(method, target, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()


def completion_or_stream(method: str, target: str, body: dict[str, Any]) -> bytes:
    if body.get("stream"):
        return reply(200, SSE, {"content-type": "text/event-stream"})
    return reply(200, json.dumps(COMPLETION).encode())


def ask() -> CompletionRequest:
    return CompletionRequest(model="raw-model", messages=[Message("user", "ping")])


@pytest.fixture
async def driver_for() -> AsyncIterator[Callable[[str], OpenAIDriver]]:
    made: list[OpenAIDriver] = []

    def make(url: str) -> OpenAIDriver:
        made.append(OpenAIDriver(DriverConfig(provider="raw", base_url=url + "/v1", api_key=TEST_KEY)))
        return made[-1]

    yield make
    for driver in made:
        await driver.aclose()


async def test_calls_reuse_one_kept_alive_connection(driver_for: Any) -> None:
    async with RawServer(completion_or_stream) as server:
        driver = driver_for(server.url)
        for _ in range(3):
            assert (await driver.complete(ask())).text == "pong"
            texts = [e.text async for e in driver.stream(ask()) if e.type == "text_delta"]
            assert "".join(texts) == "pong"
        assert len(server.targets) == 6 and server.connections == 1


async def test_max_connections_bounds_concurrent_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_API_KEY", TEST_KEY)
    async with RawServer(completion_or_stream, delay=0.05) as server:
        registry = LLMRegistry(ProvidersConfig(max_connections=2))
        registry.register("openai", builtin_factory("openai"))
        try:
            results = await asyncio.gather(*(registry.complete(ask(), provider="raw", base_url=server.url + "/v1")
                                             for _ in range(6)))
            assert [r.text for r in results] == ["pong"] * 6
            assert server.most_open == 2 and server.connections == 2
        finally:
            await registry.aclose()


async def test_a_redirect_is_not_followed(driver_for: Any) -> None:
    def answer(method: str, target: str, body: dict[str, Any]) -> bytes:
        if target.endswith("/chat/completions"):
            return reply(307, b"", {"location": "/elsewhere/chat/completions"})
        return completion_or_stream(method, target, body)

    async with RawServer(answer) as server:
        driver = driver_for(server.url)
        with pytest.raises(BadResponse):
            await driver.complete(ask())
        with pytest.raises(BadResponse):
            async for _ in driver.stream(ask()):
                pass
        assert server.targets == ["/v1/chat/completions"] * 2


async def test_a_response_over_the_size_limit_is_refused(driver_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MAX_RESPONSE_BYTES", 4096)
    big = {**COMPLETION, "padding": "x" * 10_000}
    async with RawServer(lambda m, t, b: reply(200, json.dumps(big).encode())) as server:
        with pytest.raises(BadResponse, match="too large"):
            await driver_for(server.url).complete(ask())


async def test_proxy_from_the_environment_and_no_proxy(driver_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with RawServer(completion_or_stream) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("http_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        via_proxy = driver_for("http://provider.invalid")
        assert (await via_proxy.complete(ask())).text == "pong"
        assert proxy.targets == ["http://provider.invalid/v1/chat/completions"]  # absolute form: a proxy request

        monkeypatch.setenv("NO_PROXY", "provider.invalid")
        direct = driver_for("http://provider.invalid")  # a new pool reads the environment again
        with pytest.raises(Exception) as info:
            await direct.complete(ask())
        assert info.value.code == "connection_failed" and len(proxy.targets) == 1


async def test_session_is_lazy_closed_with_the_registry_and_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_API_KEY", TEST_KEY)
    async with RawServer(completion_or_stream) as server:
        registry = LLMRegistry(ProvidersConfig())
        registry.register("openai", builtin_factory("openai"))
        driver = registry.driver("raw", base_url=server.url + "/v1")
        pool = driver.pool
        assert pool is registry.pool() and pool._session is None and pool._h1 is None  # nothing made yet
        await registry.complete(ask(), provider="raw", base_url=server.url + "/v1")
        client = pool._h1  # the completion calls' lean HTTP/1.1 client (no proxy: no aiohttp session)
        assert client is not None and not client.closed and pool._session is None
        assert server.open == 1  # its connection is kept alive
        await registry.aclose()
        assert client.closed
        for _ in range(50):
            if server.open == 0:
                break
            await asyncio.sleep(0.01)
        assert server.open == 0  # the kept connection was closed with it
        await registry.complete(ask(), provider="raw", base_url=server.url + "/v1")  # a fresh pool
        assert registry.pool()._h1 is not client and server.connections == 2
        session = registry.pool().session()  # aiohttp's session (calls through a proxy) is closed with it too
        await registry.aclose()
        assert session.closed


def test_aiohttp_is_imported_on_the_first_call_only() -> None:
    script = (
        "import sys\n"
        "from librefang_providers import api, plugin\n"
        "registry = api.LLMRegistry(api.ProvidersConfig())\n"
        "from librefang_providers.drivers import BUILTIN_FORMATS, builtin_factory\n"
        "for name in BUILTIN_FORMATS: registry.register(name, builtin_factory(name))\n"
        "before = [m for m in ('aiohttp', 'httpx') if m in sys.modules]\n"
        "registry.driver('ollama')\n"
        "print(before, 'aiohttp' in sys.modules, 'httpx' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    # nothing before a driver exists; the driver brings aiohttp, and httpx only when something asks for it
    assert out.stdout.split() == ["[]", "True", "False"]


def test_tls_trusts_what_httpx_trusts(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from librefang_providers.drivers.transport import ssl_context

    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    assert ssl_context() is True  # aiohttp's verifying context, which loads SSL_CERT_FILE/SSL_CERT_DIR
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    context = ssl_context()  # no variable: certifi's bundle, verified, as httpx does
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 50


def test_json_bodies_and_events_match_the_stdlib() -> None:
    from librefang_providers.drivers.base import dump_body, load_json

    body = {"model": "m", "messages": [{"role": "user", "content": "héllo ✓ \n \"quoted\""}], "n": 3, "t": 0.5,
            "tools": [{"name": "x", "input": {"a": [1, None, True]}}]}
    assert json.loads(dump_body(body)) == body
    # what orjson refuses goes through json, written as json writes it
    for odd in ({"text": "lone \ud800 surrogate"}, {1: "int key"}, {"big": 2**70}):
        assert dump_body(odd) == json.dumps(odd, separators=(",", ":")).encode()
    with pytest.raises(TypeError):  # not JSON for either: refused as before
        dump_body({"x": object()})
    event = b'{"choices":[{"delta":{"content":"abcd \\u00e9"}}]}'
    assert load_json(event) == json.loads(event)
    for odd_event in (b'{"x": NaN}', b'"\\ud800"', b'\xef\xbb\xbf{"bom": 1}'):
        assert repr(load_json(odd_event)) == repr(json.loads(odd_event))
    for bad in (b'{"x": ', b"\xff", b"[DONE]"):
        with pytest.raises(ValueError):
            load_json(bad)

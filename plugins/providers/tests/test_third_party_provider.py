"""A third-party provider plugin, written here, registers a driver through the hook and is used by name.

The kernel loads the real providers plugin from its entry point; the third party is a plain module
with one ``@hookimpl`` passed to ``make_kernel(plugins=...)``, exactly as an installed package would be.
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from librefang import hookimpl
from librefang_providers.api import (
    AuthFailed,
    CompletionRequest,
    CompletionResponse,
    ContentComplete,
    DriverConfig,
    LLMDriver,
    Message,
    StreamEvent,
    TextBlock,
    TextDelta,
    Usage,
    collect,
    events_from_response,
    get_registry,
)

from tests.fakes.llm_server import Script


class EchoDriver:
    """Answers with the user's text reversed; counts calls."""

    calls = 0

    def __init__(self, config: DriverConfig) -> None:
        self.config = config

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        EchoDriver.calls += 1
        text = str(request.messages[-1].content)[::-1]
        return CompletionResponse([TextBlock(text)], "end_turn", Usage(1, len(text)), self.config.provider,
                                  request.model)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        EchoDriver.calls += 1
        for char in str(request.messages[-1].content)[::-1]:
            yield TextDelta(char)
        yield ContentComplete("end_turn", Usage(1, 1), self.config.provider, request.model)


class BatchDriver(EchoDriver):
    """A provider that cannot stream: ``stream`` replays ``complete`` as events."""

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        async for event in events_from_response(await self.complete(request)):
            yield event


def echo_plugin() -> types.ModuleType:
    module = types.ModuleType("librefang_echo_provider")

    @hookimpl
    def register_llm_providers(register: Any) -> None:
        register("echo", EchoDriver)
        register("batch", lambda config: BatchDriver(config))

    module.register_llm_providers = register_llm_providers  # type: ignore[attr-defined]
    return module


def greedy_plugin() -> types.ModuleType:
    """Tries to take over a built-in name: refused, and only this plugin fails."""
    module = types.ModuleType("librefang_greedy_provider")

    @hookimpl
    def register_llm_providers(register: Any) -> None:
        register("openai", EchoDriver)

    module.register_llm_providers = register_llm_providers  # type: ignore[attr-defined]
    return module


@pytest.fixture(autouse=True)
def only_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Entry points: only the providers plugin (the test plugins are passed in directly).
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers")


def ask(text: str, model: str = "echo-1") -> CompletionRequest:
    return CompletionRequest(model=model, messages=[Message("user", text)])


async def test_third_party_provider_is_used_by_name(make_kernel: Any) -> None:
    kernel = await make_kernel(plugins={"echo-provider": echo_plugin()})
    registry = get_registry(kernel)
    assert registry.owners["echo"] == "echo-provider" and registry.owners["openai"] == "providers"
    assert isinstance(registry.driver("echo"), LLMDriver)
    response = await registry.complete(ask("stressed"), provider="echo")
    assert (response.text, response.provider, response.model) == ("desserts", "echo", "echo-1")
    events = [e async for e in registry.stream(ask("abc"), provider="echo")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "cba"
    streamed = await collect(registry.stream(ask("drawer"), provider="batch"))
    assert (streamed.text, streamed.provider, streamed.usage.output_tokens) == ("reward", "batch", 6)


async def test_third_party_provider_as_a_fallback(make_kernel: Any, fake_llm: Any) -> None:
    config = f"""
[providers]
provider_max_retries = 0
provider_urls = {{ openai = "{fake_llm.base_url('openai')}" }}

[[fallback_providers]]
provider = "echo"
model = "echo-2"
"""
    kernel = await make_kernel(plugins={"echo-provider": echo_plugin()}, config=config)
    registry = get_registry(kernel)
    kernel.vault.set("OPENAI_API_KEY", "sk-vault-stored-key-1234")
    fake_llm.script(Script(fault="server_error"))
    response = await registry.complete(ask("olleh", model="gpt-fake"), provider="openai")
    assert (response.provider, response.model, response.text) == ("echo", "echo-2", "hello")
    assert fake_llm.requests[-1].headers["authorization"] == "Bearer sk-vault-stored-key-1234"
    fake_llm.script(Script(fault="auth"))
    with pytest.raises(AuthFailed) as auth:  # fallback_models=[]: no fallback for this call
        await registry.complete(ask("x"), provider="openai", fallback_models=[])
    assert "sk-vault-stored-key-1234" not in str(auth.value) and "***" in str(auth.value)


async def test_duplicate_name_fails_only_the_offending_plugin(make_kernel: Any) -> None:
    kernel = await make_kernel(plugins={"greedy": greedy_plugin(), "echo-provider": echo_plugin()})
    records = kernel.plugins.records
    assert "already registered" in (records["greedy"].error or "")
    assert records["providers"].ok and records["echo-provider"].ok
    registry = get_registry(kernel)
    assert registry.factories["openai"] is not EchoDriver and "echo" in registry.factories


async def test_bad_fallback_config_names_the_key(make_kernel: Any) -> None:
    kernel = await make_kernel(config='[[fallback_providers]]\nprovider = "openai"\n')
    error = kernel.plugins.records["providers"].error or ""
    assert "fallback_providers.0.model" in error


async def test_registry_closed_on_shutdown(make_kernel: Any) -> None:
    kernel = await make_kernel()
    registry = get_registry(kernel)
    client = registry.http_client()
    session = registry.pool().session()  # the built-in drivers' aiohttp session
    await kernel.stop_plugin("providers")
    assert "providers.registry" not in kernel.services
    assert client.is_closed and session.closed


async def test_third_party_driver_built_on_httpdriver(make_kernel: Any, fake_llm: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver written against the base class: ``self.client`` is the registry's pooled httpx client
    (``DriverConfig.http_client``), and ``open_stream`` yields a response read with ``aiter_bytes()``."""
    from librefang_providers.drivers.base import TRANSPORT_ERRORS, HTTPDriver

    class RawDriver(HTTPDriver):
        async def complete(self, request: CompletionRequest) -> CompletionResponse:
            body = {"model": request.model, "messages": [{"role": "user", "content": "hi"}]}
            reply = await self.client.post(self.base_url + "/chat/completions", json=body,
                                           timeout=self.timeout(request, stream=False))
            text = reply.json()["choices"][0]["message"]["content"]
            return CompletionResponse([TextBlock(text)], "end_turn", Usage(), self.provider, request.model)

        async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
            body = {"model": request.model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            raw = b""
            async with self.open_stream(self.base_url + "/chat/completions", body,
                                        {"content-type": "application/json"}, request) as resp:
                assert resp.status_code == 200 and "event-stream" in resp.headers["content-type"]
                try:
                    async for chunk in resp.aiter_bytes():
                        raw += chunk
                except TRANSPORT_ERRORS as exc:
                    raise self.transport_error(exc, request.model, "", False) from None
            yield TextDelta(raw.decode())
            yield ContentComplete("end_turn", Usage(), self.provider, request.model)

    module = types.ModuleType("librefang_raw_provider")

    @hookimpl
    def register_llm_providers(register: Any) -> None:
        register("raw", RawDriver)

    module.register_llm_providers = register_llm_providers  # type: ignore[attr-defined]
    config = f'[providers]\nprovider_max_retries = 0\nprovider_urls = {{ raw = "{fake_llm.base_url("openai")}" }}\n'
    kernel = await make_kernel(plugins={"raw-provider": module}, config=config)
    registry = get_registry(kernel)
    driver = registry.driver("raw")
    assert driver.client is registry.http_client() is driver.config.http_client
    fake_llm.script(Script(text="plain"), Script(text="streamed"))
    assert (await registry.complete(ask("x", "m"), provider="raw")).text == "plain"
    streamed = (await collect(registry.stream(ask("x", "m"), provider="raw"))).text
    assert streamed.startswith("data: {") and streamed.endswith("data: [DONE]\n\n")
    assert [r.stream for r in fake_llm.requests] == [False, True]

"""The registry reuses a provider's resolution (catalog spec, URL override, factory) between calls, and
every path that changes one of them takes effect on the very next call: a base URL saved through
``PUT /api/providers/{name}/url``, a key stored through ``POST /api/providers/{name}/key`` or put in the
environment, a replaced ``[providers]`` config, a newly registered factory, a spec source without a
version (fake LLM servers, real HTTP)."""

from __future__ import annotations

from typing import Any

import pytest
from librefang_providers.api import CompletionRequest, LLMRegistry, Message, ProvidersConfig, get_registry
from librefang_providers.drivers import builtin_factory
from librefang_providers.types import ProviderSpec

from tests.fakes.llm_server import FakeLLMServer, Script

KEY_ONE = "sk-groq-first-key-0123456789"
KEY_TWO = "sk-groq-second-key-9876543210"


def ask() -> CompletionRequest:
    return CompletionRequest(model="fake-model", messages=[Message("user", "hello")])


async def stream_text(registry: LLMRegistry, provider: str) -> str:
    parts = [getattr(e, "text", "") async for e in registry.stream(ask(), provider=provider)
             if e.type == "text_delta"]
    return "".join(parts)


async def test_url_and_key_changes_through_the_api_apply_to_the_next_call(
        api: Any, provider_kernel: Any, fake_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    registry = get_registry(provider_kernel)
    async with FakeLLMServer() as other:
        assert (await api.put("/api/providers/groq/url", json={"base_url": fake_llm.base_url("openai")})).status_code == 200
        assert (await api.post("/api/providers/groq/key", json={"key": KEY_ONE})).status_code == 200
        fake_llm.script(Script(text="from the first"), Script(text="again the first"))
        assert (await registry.complete(ask(), provider="groq")).text == "from the first"
        assert await stream_text(registry, "groq") == "again the first"
        assert [r.headers["authorization"] for r in fake_llm.requests] == [f"Bearer {KEY_ONE}"] * 2

        # a new base URL: the next call goes to the other server
        assert (await api.put("/api/providers/groq/url", json={"base_url": other.base_url("openai")})).status_code == 200
        other.script(Script(text="from the second"), Script(text="second again"))
        assert (await registry.complete(ask(), provider="groq")).text == "from the second"
        assert await stream_text(registry, "groq") == "second again"
        assert len(fake_llm.requests) == 2 and len(other.requests) == 2

        # a new key in the vault: sent on the next call
        assert (await api.post("/api/providers/groq/key", json={"key": KEY_TWO})).status_code == 200
        other.script(Script(text="new key"))
        await registry.complete(ask(), provider="groq")
        assert other.requests[-1].headers["authorization"] == f"Bearer {KEY_TWO}"

        # the environment wins over the vault, also at once
        monkeypatch.setenv("GROQ_API_KEY", "sk-groq-from-the-environment")
        other.script(Script(text="env key"))
        await registry.complete(ask(), provider="groq")
        assert other.requests[-1].headers["authorization"] == "Bearer sk-groq-from-the-environment"


class CountingSource:
    """A spec source that counts how often the registry asks it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.calls = 0
        self.generation = 0

    def __call__(self, name: str) -> ProviderSpec | None:
        self.calls += 1
        if name != "acme":
            return None
        return ProviderSpec("acme", self.base_url, "openai", "ACME_API_KEY")

    def version(self) -> int:
        return self.generation


async def test_resolution_is_reused_until_its_inputs_change(fake_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_API_KEY", KEY_ONE)
    registry = LLMRegistry(ProvidersConfig(retry_base_delay_ms=1))
    registry.register("openai", builtin_factory("openai"))
    source = CountingSource(fake_llm.base_url("openai"))
    registry.add_spec_source(source, version=source.version)
    try:
        first = registry.driver("acme")
        asked = source.calls
        for _ in range(5):
            assert registry.driver("acme") is first
        assert source.calls == asked  # reused: the source was not asked again

        async with FakeLLMServer() as other:
            # the source's answer changes and its version says so: the next call sees it
            source.base_url = other.base_url("openai")
            source.generation += 1
            other.script(Script(text="moved"))
            assert (await registry.complete(ask(), provider="acme")).text == "moved"
            assert len(other.requests) == 1 and not fake_llm.requests

            # a [providers] provider_urls override in a replaced config wins over the source
            registry.config = ProvidersConfig(retry_base_delay_ms=1, provider_urls={"acme": fake_llm.base_url("openai")})
            fake_llm.script(Script(text="overridden"))
            assert (await registry.complete(ask(), provider="acme")).text == "overridden"

            # and so does a new value assigned in place to the same config object
            registry.config.provider_urls = {"acme": other.base_url("openai")}
            other.script(Script(text="in place"))
            assert (await registry.complete(ask(), provider="acme")).text == "in place"

            # a key changed in the environment is read on every call
            monkeypatch.setenv("ACME_API_KEY", KEY_TWO)
            other.script(Script(text="new key"))
            await registry.complete(ask(), provider="acme")
            assert other.requests[-1].headers["authorization"] == f"Bearer {KEY_TWO}"
    finally:
        await registry.aclose()


async def test_a_new_factory_or_an_unversioned_source_is_seen_at_once(fake_llm: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_API_KEY", KEY_ONE)
    registry = LLMRegistry(ProvidersConfig())
    registry.register("openai", builtin_factory("openai"))
    source = CountingSource(fake_llm.base_url("openai"))
    registry.add_spec_source(source)  # no version: asked on every call
    try:
        assert registry.driver("acme").base_url == fake_llm.base_url("openai")
        async with FakeLLMServer() as other:
            source.base_url = other.base_url("openai")
            assert registry.driver("acme").base_url == other.base_url("openai")
        asked = source.calls
        registry.driver("acme")
        assert source.calls > asked

        class Echo:
            def __init__(self, config: Any) -> None:
                self.config = config

        registry.register("acme", Echo)  # a registered factory takes precedence over the spec's format
        assert isinstance(registry.driver("acme"), Echo)
    finally:
        await registry.aclose()


async def test_the_per_slot_fast_path_rechecks_the_key_and_the_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    """driver() answers a repeated slot without resolving again, but a key changed from outside the
    process (the vault here) is used on the very next call, and a driver evicted from the LRU (so no
    longer closed by aclose) is never handed out again."""
    from librefang_providers import registry as registry_module

    monkeypatch.delenv("ACME_API_KEY", raising=False)
    vault = {"ACME_API_KEY": KEY_ONE}
    registry = LLMRegistry(ProvidersConfig(), vault_get=vault.get)
    registry.register("openai", builtin_factory("openai"))
    source = CountingSource("http://127.0.0.1:9/v1")
    registry.add_spec_source(source, version=source.version)
    try:
        first = registry.driver("acme")
        assert first.config.api_key == KEY_ONE
        asked = source.calls
        assert registry.driver("acme") is first and source.calls == asked

        vault["ACME_API_KEY"] = KEY_TWO  # changed by another process writing the vault
        second = registry.driver("acme")
        assert second is not first and second.config.api_key == KEY_TWO
        assert registry.driver("acme") is second

        vault["ACME_API_KEY"] = KEY_ONE  # back to the first key: its driver is still cached
        assert registry.driver("acme") is first

        del vault["ACME_API_KEY"]  # no key any more: refused at once, not served from the fast path
        with pytest.raises(registry_module.MissingApiKey):
            registry.driver("acme")
        vault["ACME_API_KEY"] = KEY_ONE
        assert registry.driver("acme") is first

        # the slot's driver is evicted from the LRU by other slots: a fresh one is built and cached
        monkeypatch.setattr(registry_module, "MAX_CACHED_DRIVERS", 2)
        registry.driver("acme", base_url="http://127.0.0.1:9/a")
        registry.driver("acme", base_url="http://127.0.0.1:9/b")
        assert first not in registry._drivers.values()
        again = registry.driver("acme")
        assert again is not first and again in registry._drivers.values()
        assert registry.driver("acme") is again
    finally:
        await registry.aclose()
    assert not registry._drivers

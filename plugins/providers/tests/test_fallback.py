"""Registry: retries with backoff (Retry-After), the fallback chain, key resolution and scrubbing."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from librefang_providers.api import (
    AllProvidersExhausted,
    AuthFailed,
    BadResponse,
    CompletionRequest,
    LLMRegistry,
    Message,
    MissingApiKey,
    ProvidersConfig,
    ProviderSpec,
    Target,
    TextDelta,
    UnknownProvider,
    UpstreamError,
)
from librefang_providers.drivers import BUILTIN_FORMATS

from tests.fakes.llm_server import Script

KEY = "sk-registry-secret-987654321"


def make_registry(fake: Any, fallbacks: tuple[Any, ...] = (), **config: Any) -> LLMRegistry:
    config.setdefault("retry_base_delay_ms", 10)
    config.setdefault("provider_urls", {"openai": fake.base_url("openai"), "anthropic": fake.base_url("anthropic"),
                                        "gemini": fake.base_url("gemini"), "ollama": fake.base_url("ollama")})
    registry = LLMRegistry(ProvidersConfig(**config), fallbacks=fallbacks)
    for name, driver in BUILTIN_FORMATS.items():
        registry.register(name, driver, owner="providers")
    return registry


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.setenv(env, KEY)


@pytest.fixture
async def registry(fake_llm: Any, keys: None) -> Any:
    registry = make_registry(fake_llm)
    yield registry
    await registry.aclose()


def request(**kw: Any) -> CompletionRequest:
    return CompletionRequest(model="fake-model", messages=[Message("user", "hello")], **kw)


async def test_retry_honours_retry_after_seconds(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(fault="rate_limit", retry_after="1"), Script(text="after the pause"))
    started = time.monotonic()
    response = await registry.complete(request(), provider="openai")
    assert time.monotonic() - started >= 1.0
    assert response.text == "after the pause" and response.provider == "openai"
    assert len(fake_llm.requests) == 2


async def test_retry_after_ms_and_overloaded(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(fault="overloaded", retry_after=None, retry_after_ms=250), Script(text="ok"))
    started = time.monotonic()
    response = await registry.complete(request(), provider="anthropic")
    assert 0.25 <= time.monotonic() - started < 2
    assert response.text == "ok"


async def test_exponential_backoff_on_5xx_then_gives_up(fake_llm: Any, keys: None) -> None:
    registry = make_registry(fake_llm, provider_max_retries=2, retry_base_delay_ms=100)
    fake_llm.script(*[Script(fault="server_error") for _ in range(3)])
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:  # one slot: its own typed error
        await registry.complete(request(), provider="openai", fallback_models=[])
    assert time.monotonic() - started >= 0.3  # 0.1 + 0.2
    assert info.value.status == 500 and len(fake_llm.requests) == 3
    await registry.aclose()


async def test_non_retryable_error_is_not_retried(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(fault="model_not_found"), Script(text="never"))
    with pytest.raises(Exception, match="does not exist"):
        await registry.complete(request(), provider="openai")
    assert len(fake_llm.requests) == 1


async def test_long_retry_after_fails_over_instead_of_sleeping(fake_llm: Any, keys: None) -> None:
    registry = make_registry(fake_llm, retry_max_delay_secs=2)
    fake_llm.script(Script(fault="rate_limit", retry_after="3600", only="openai"), Script(text="from claude"))
    started = time.monotonic()
    response = await registry.complete(request(), provider="openai",
                                       fallback_models=[{"provider": "anthropic", "model": "claude-fake"}])
    assert time.monotonic() - started < 1
    assert (response.provider, response.model, response.text) == ("anthropic", "claude-fake", "from claude")
    assert [r.format for r in fake_llm.requests] == ["openai", "anthropic"]
    assert fake_llm.requests[-1].body["model"] == "claude-fake"
    await registry.aclose()


async def test_chain_order_per_call_then_global(fake_llm: Any, keys: None) -> None:
    registry = make_registry(fake_llm, fallbacks=({"provider": "ollama", "model": "llama-fake"},))
    fake_llm.script(Script(fault="auth", only="openai"), Script(fault="context_too_long", only="gemini"),
                    Script(text="llama served", only="ollama"))
    response = await registry.complete(request(), provider="openai",
                                       fallback_models=[Target("gemini", "gemini-fake")])
    assert (response.provider, response.model) == ("ollama", "llama-fake")
    assert [r.format for r in fake_llm.requests] == ["openai", "gemini", "ollama"]
    assert [t.provider for t in registry.chain(request(), "openai", None)] == ["openai", "ollama"]
    assert [t.provider for t in registry.chain(request(), "openai", [])] == ["openai"]  # [] disables fallback
    await registry.aclose()


async def test_all_providers_exhausted_lists_every_attempt(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(fault="auth", only="openai"), Script(fault="model_not_found", only="anthropic"))
    with pytest.raises(AllProvidersExhausted) as info:
        await registry.complete(request(), provider="openai",
                                fallback_models=[Target("anthropic", "claude-x"), Target("nonexistent", "m")])
    attempts = [a.describe() for a in info.value.attempts]
    assert [(a["provider"], a["model"], a["code"]) for a in attempts] == [
        ("openai", "fake-model", "auth_failed"), ("anthropic", "claude-x", "model_not_found"),
        ("nonexistent", "m", "unknown_provider")]
    assert KEY not in str(info.value)  # the auth error echoed the key upstream


async def test_stream_falls_back_before_the_first_event(fake_llm: Any, keys: None) -> None:
    registry = make_registry(fake_llm, provider_max_retries=0)
    fake_llm.script(Script(fault="overloaded", only="anthropic"), Script(text="gemini streams", only="gemini"))
    events = [e async for e in registry.stream(request(), provider="anthropic",
                                               fallback_models=[Target("gemini", "gem-fake")])]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "gemini streams"
    assert (events[-1].provider, events[-1].model) == ("gemini", "gem-fake")
    await registry.aclose()


async def test_stream_retries_then_serves(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(fault="server_error"), Script(fault="drop", fault_after=0), Script(text="third time"))
    events = [e async for e in registry.stream(request(), provider="ollama")]
    assert events[0].text == "thir" and events[-1].provider == "ollama"
    assert len(fake_llm.requests) == 3


async def test_stream_is_committed_after_the_first_event(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(Script(text="one two three four", fault="drop", fault_after=4, only="openai"),
                    Script(text="should not be used"))
    received: list[str] = []
    with pytest.raises(BadResponse) as info:
        async for event in registry.stream(request(), provider="openai",
                                           fallback_models=[Target("anthropic", "c")]):
            if isinstance(event, TextDelta):
                received.append(event.text)
    assert "".join(received) == info.value.partial_text and received
    assert [r.format for r in fake_llm.requests] == ["openai"]


async def test_stream_closes_the_connection_when_the_consumer_stops(fake_llm: Any, registry: LLMRegistry) -> None:
    fake_llm.script(text="x" * 400, chunk_size=1, delay=0.001)
    async for _event in registry.stream(request(), provider="openai"):
        break  # leaving early must not hang or leak the response
    fake_llm.script(text="next")
    assert (await registry.complete(request(), provider="openai")).text == "next"


# -- keys -------------------------------------------------------------------------------------------------
async def test_key_from_environment_is_sent_and_scrubbed(fake_llm: Any, registry: LLMRegistry,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_llm.script(fault="auth")
    with pytest.raises(AuthFailed) as info:
        await registry.complete(request(), provider="openai")
    assert fake_llm.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in str(info.value) and "***" in str(info.value)
    assert KEY not in caplog.text


async def test_key_resolution_order(fake_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = {"OPENAI_API_KEY": "sk-from-vault", "MY_REF": "sk-from-config-ref"}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    registry = make_registry(fake_llm)
    registry._vault_get = vault.get  # what create_registry wires to kernel.vault
    spec = registry.spec("openai")
    assert registry.api_key("openai", spec) == "sk-from-vault"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert registry.api_key("openai", spec) == "sk-from-env"
    registry.config.provider_api_keys = {"openai": "vault:MY_REF"}
    registry._resolve_secret = lambda v: vault.get(v.removeprefix("vault:"), "") if v.startswith("vault:") else v
    assert registry.api_key("openai", spec) == "sk-from-config-ref"
    await registry.aclose()


async def test_missing_key_fails_without_a_request(fake_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    registry = make_registry(fake_llm)
    assert registry.auth_status("anthropic") == "missing"
    assert registry.auth_status("ollama") == "not_required"
    with pytest.raises(MissingApiKey, match="ANTHROPIC_API_KEY"):
        await registry.complete(request(), provider="anthropic")
    assert fake_llm.requests == []
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    assert registry.auth_status("anthropic") == "configured"
    await registry.aclose()


# -- resolution ---------------------------------------------------------------------------------------------
async def test_unknown_provider_and_openai_compatible_by_base_url(fake_llm: Any, registry: LLMRegistry,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownProvider, match="unknown provider 'nope'"):
        await registry.complete(request(), provider="nope")
    monkeypatch.setenv("MY_LOCAL_LLM_API_KEY", "sk-local")
    fake_llm.script(Script(fault="auth", only="gemini"), Script(text="compatible", only="openai"))
    response = await registry.complete(
        request(), provider="gemini",
        fallback_models=[Target("my-local-llm", "m", base_url=fake_llm.base_url("openai"))])
    assert (response.provider, response.text) == ("my-local-llm", "compatible")
    assert fake_llm.requests[-1].headers["authorization"] == "Bearer sk-local"


async def test_spec_source_maps_a_catalog_provider_to_a_format(fake_llm: Any, registry: LLMRegistry,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    specs = {"groq": ProviderSpec("groq", fake_llm.base_url("openai"), "openai", "GROQ_API_KEY")}
    registry.add_spec_source(specs.get)
    monkeypatch.setenv("GROQ_API_KEY", "gsk-test")
    fake_llm.script(text="fast")
    response = await registry.complete(request(), provider="groq")
    assert (response.provider, response.text) == ("groq", "fast")
    assert fake_llm.requests[-1].headers["authorization"] == "Bearer gsk-test"
    assert registry.driver("groq") is registry.driver("groq")  # cached per provider, URL and key


def test_registering_twice_or_a_bad_name_is_refused() -> None:
    registry = LLMRegistry()
    registry.register("acme", object, owner="one")
    with pytest.raises(ValueError, match="already registered by one"):
        registry.register("acme", object, owner="two")
    with pytest.raises(ValueError, match="must match"):
        registry.register("Bad Name", object)

"""Embeddings through the registry over real HTTP against the fake provider: the OpenAI, Ollama and
Gemini wire formats, batching, retries, typed errors and response checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
from librefang_providers.api import (
    AuthFailed,
    BadResponse,
    LLMRegistry,
    ProvidersConfig,
    UnknownProvider,
    embed,
)
from librefang_providers.drivers import BUILTIN_FORMATS
from librefang_providers.embeddings import MAX_INPUTS_PER_CALL

from tests.fakes import llm_embeddings
from tests.fakes.llm_server import FakeLLMServer, Script

from .conftest import TEST_KEY


@pytest.fixture
async def registry(fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(name, TEST_KEY)
    config = ProvidersConfig(retry_base_delay_ms=1, provider_urls={
        fmt: fake_llm.base_url(fmt) for fmt in ("openai", "anthropic", "gemini", "ollama")})
    reg = LLMRegistry(config)
    for name, driver_class in BUILTIN_FORMATS.items():
        reg.register(name, driver_class)
    yield reg
    await reg.aclose()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.parametrize("provider", ["openai", "ollama", "gemini"])
async def test_each_wire_format_returns_one_vector_per_text(registry: Any, fake_llm: FakeLLMServer,
                                                            provider: str) -> None:
    texts = ["green tea in the morning", "morning tea", "winter tires for the car"]
    vectors = await embed(registry, texts, provider=provider, model="fake-embed")
    assert vectors == [llm_embeddings.vector(t) for t in texts]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    sent = [r for r in fake_llm.requests if r.format == "embeddings"]
    assert len(sent) == 1
    if provider == "openai":
        assert sent[0].path == "/v1/embeddings" and sent[0].body["input"] == texts
        assert sent[0].headers["authorization"] == f"Bearer {TEST_KEY}"
    elif provider == "ollama":
        assert sent[0].path == "/api/embed" and sent[0].body == {"model": "fake-embed", "input": texts}
    else:
        assert sent[0].path == "/v1beta/models/fake-embed:batchEmbedContents"
        assert sent[0].headers["x-goog-api-key"] == TEST_KEY
        assert [r["content"]["parts"][0]["text"] for r in sent[0].body["requests"]] == texts


async def test_batches_dimensions_and_empty_input(registry: Any, fake_llm: FakeLLMServer) -> None:
    texts = [f"text number {n}" for n in range(MAX_INPUTS_PER_CALL + 5)]
    vectors = await embed(registry, texts, provider="openai", model="fake-embed", dimensions=16)
    assert len(vectors) == len(texts) and {len(v) for v in vectors} == {16}
    assert [len(r.body["input"]) for r in fake_llm.requests] == [MAX_INPUTS_PER_CALL, 5]
    assert fake_llm.requests[0].body["dimensions"] == 16
    assert await embed(registry, [], provider="openai", model="fake-embed") == []
    with pytest.raises(ValueError):
        await embed(registry, ["x"] * 10_001, provider="openai", model="fake-embed")


async def test_transient_errors_are_retried_and_others_are_typed(registry: Any, fake_llm: FakeLLMServer) -> None:
    fake_llm.script(Script(only="embeddings", fault="rate_limit", retry_after=None))
    assert len(await embed(registry, ["hello"], provider="openai", model="fake-embed")) == 1
    assert len([r for r in fake_llm.requests if r.format == "embeddings"]) == 2
    fake_llm.script(Script(only="embeddings", fault="auth"))
    with pytest.raises(AuthFailed) as caught:
        await embed(registry, ["hello"], provider="openai", model="fake-embed")
    assert TEST_KEY not in str(caught.value)  # the fake echoes the key; it is scrubbed
    with pytest.raises(UnknownProvider):  # Anthropic has no embeddings API
        await embed(registry, ["hello"], provider="anthropic", model="claude")


async def test_a_bad_response_is_refused(registry: Any, fake_llm: FakeLLMServer) -> None:
    class Wrong:
        provider = "wrong"

        async def embed(self, texts: list[str], model: str) -> Any:
            return [[1.0, float("nan")] for _ in texts]

    class Short(Wrong):
        async def embed(self, texts: list[str], model: str) -> Any:
            return [[1.0]]

    registry.register("wrong", lambda config: Wrong())
    registry.register("short", lambda config: Short())
    with pytest.raises(BadResponse, match="not finite"):
        await embed(registry, ["a"], provider="wrong", model="m")
    with pytest.raises(BadResponse, match="does not hold 2 vectors"):
        await embed(registry, ["a", "b"], provider="short", model="m")

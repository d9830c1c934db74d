"""The bundled catalog data: size, integrity, and spot-checked public facts."""

from __future__ import annotations

import re

import pytest
from librefang_providers.catalog import API_FORMATS, MODEL_ID, TIERS
from librefang_providers.catalog_store import load_bundled

PROVIDERS, MODELS = load_bundled()
BY_ID = {p.id: p for p in PROVIDERS}


def test_catalog_has_at_least_40_providers_and_130_models():
    assert len(PROVIDERS) >= 40
    assert len(MODELS) >= 130


def test_every_openai_compatible_provider_named_in_the_issue_is_present():
    for name in ("groq", "openrouter", "deepseek", "together", "mistral", "fireworks", "xai", "perplexity",
                 "cerebras", "nvidia-nim", "vllm", "lmstudio", "llamacpp"):
        assert BY_ID[name].api_format == "openai", name
        assert BY_ID[name].base_url.startswith(("https://", "http://127.0.0.1")), name
    assert BY_ID["anthropic"].api_format == "anthropic"
    assert BY_ID["gemini"].api_format == "gemini"
    assert BY_ID["ollama"].api_format == "ollama"


def test_provider_entries_are_complete_and_consistent():
    assert len(BY_ID) == len(PROVIDERS), "duplicate provider id"
    aliases = [a for p in PROVIDERS for a in p.aliases]
    assert len(aliases) == len(set(aliases)), "a provider alias is used twice"
    assert not set(aliases) & set(BY_ID), "a provider alias shadows a provider id"
    for provider in PROVIDERS:
        assert provider.api_format in API_FORMATS
        assert provider.display_name
        if provider.local:
            assert not provider.key_required and provider.base_url.startswith("http://127.0.0.1:")
        else:
            assert provider.key_required, provider.id
            assert re.fullmatch(r"[A-Z][A-Z0-9_]+", provider.api_key_env), provider.id
            assert provider.base_url == "" or provider.base_url.startswith("https://"), provider.id


def test_model_entries_are_complete_and_consistent():
    seen = set()
    for model in MODELS:
        assert model.provider in BY_ID, model.id
        assert (model.provider, model.id) not in seen, f"duplicate {model.provider}/{model.id}"
        seen.add((model.provider, model.id))
        assert re.fullmatch(MODEL_ID, model.id)
        assert model.tier in TIERS
        assert model.display_name
        assert 1024 <= model.max_output_tokens <= model.context_window, model.id
        if model.pricing_known and model.input_cost_per_m:
            assert model.output_cost_per_m >= model.input_cost_per_m, model.id
        if model.cache_read_cost_per_m is not None:
            assert model.cache_read_cost_per_m < model.input_cost_per_m, model.id
        if BY_ID[model.provider].local:
            assert model.tier == "local" and model.input_cost_per_m == 0


def test_aliases_are_unique_and_never_shadow_a_model_id():
    ids = {m.id.lower() for m in MODELS}
    aliases = [a for m in MODELS for a in m.aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & ids


@pytest.mark.parametrize(
    ("provider", "model_id", "prices", "context"),
    [
        ("anthropic", "claude-sonnet-4-5-20250929", (3, 15), 200_000),
        ("anthropic", "claude-opus-4-1-20250805", (15, 75), 200_000),
        ("anthropic", "claude-haiku-4-5-20251001", (1, 5), 200_000),
        ("openai", "gpt-4o-mini", (0.15, 0.6), 128_000),
        ("openai", "gpt-4.1", (2, 8), 1_047_576),
        ("openai", "gpt-5", (1.25, 10), 400_000),
        ("gemini", "gemini-2.5-pro", (1.25, 10), 1_048_576),
        ("gemini", "gemini-2.5-flash", (0.3, 2.5), 1_048_576),
        ("groq", "llama-3.3-70b-versatile", (0.59, 0.79), 131_072),
        ("deepseek", "deepseek-chat", (0.28, 0.42), 131_072),
        ("mistral", "mistral-large-2411", (2, 6), 131_072),
        ("xai", "grok-4-0709", (3, 15), 256_000),
    ],
)
def test_spot_checked_public_prices_and_limits(provider, model_id, prices, context):
    model = next(m for m in MODELS if m.provider == provider and m.id == model_id)
    assert (model.input_cost_per_m, model.output_cost_per_m) == prices
    assert model.context_window == context


def test_reasoning_only_models_are_marked_as_thinking():
    for model_id in ("o3", "o1", "deepseek-reasoner", "claude-opus-4-5-20251101"):
        assert next(m for m in MODELS if m.id == model_id).supports_thinking


def test_every_provider_resolves_to_a_driver_spec():
    for provider in PROVIDERS:
        spec = provider.spec()
        assert spec.id == provider.id and spec.format == provider.api_format
        assert spec.api_key_env

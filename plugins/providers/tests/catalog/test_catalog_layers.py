"""Catalog lookups, cost, and the layers on disk (registry folder, custom models, aliases, URLs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from librefang_providers.catalog import ModelEntry, cost
from librefang_providers.catalog_store import (
    build_catalog,
    write_custom_models,
    write_user_aliases,
)
from librefang_providers.types import Usage


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def test_lookup_by_id_alias_and_provider_qualified_id(home):
    catalog, report = build_catalog(home)
    assert report.errors == []
    assert catalog.find_model("sonnet").id == "claude-sonnet-4-5-20250929"
    assert catalog.find_model("SONNET").id == "claude-sonnet-4-5-20250929"
    # The same open-weight id is served by several providers: first in catalog order, or qualified.
    assert catalog.find_model("meta-llama/Llama-3.3-70B-Instruct").provider == "deepinfra"
    assert catalog.find_model("nebius/meta-llama/Llama-3.3-70B-Instruct").provider == "nebius"
    assert catalog.find_model("groq:openai/gpt-oss-120b").provider == "groq"
    assert catalog.find_model("no-such-model") is None
    assert catalog.provider("google").id == "gemini"
    assert catalog.resolve("opus")[0].id == "anthropic"


def test_cost_bills_cached_tokens_at_their_own_price(home):
    catalog, _ = build_catalog(home)
    sonnet = catalog.find_model("sonnet")
    # 1M input of which 200k read from cache and 100k written to it, 10k output.
    usage = Usage(input_tokens=1_000_000, output_tokens=10_000, cache_read_tokens=200_000, cache_write_tokens=100_000)
    expected = (700_000 * 3 + 200_000 * 0.3 + 100_000 * 3.75 + 10_000 * 15) / 1_000_000
    assert cost(sonnet, usage) == pytest.approx(expected)
    # Reference-style names in a mapping work the same.
    assert cost(sonnet, {"input_tokens": 1_000_000, "output_tokens": 10_000, "cache_read_input_tokens": 200_000,
                         "cache_creation_input_tokens": 100_000}) == pytest.approx(expected)
    assert catalog.cost("gpt-4o-mini", Usage(input_tokens=2_000_000, output_tokens=1_000_000)) == pytest.approx(0.9)
    assert catalog.cost("unknown-model", Usage(1, 1)) is None


def test_cost_without_cache_prices_uses_input_price_and_unknown_pricing_is_free():
    model = ModelEntry(id="m", provider="openai", input_cost_per_m=2, output_cost_per_m=4)
    assert cost(model, Usage(input_tokens=1_000_000, cache_read_tokens=500_000)) == pytest.approx(2.0)
    unknown = ModelEntry(id="m", provider="openai", input_cost_per_m=2, pricing_known=False)
    assert cost(unknown, Usage(input_tokens=1_000_000)) == 0.0
    # Inconsistent counts (cache larger than input) never produce a negative bill.
    assert cost(model, Usage(input_tokens=10, cache_read_tokens=50)) >= 0


def test_registry_folder_overrides_and_extends_bundled_data(home):
    providers = home / "registry" / "providers"
    providers.mkdir(parents=True)
    (providers / "acme.toml").write_text(
        '[provider]\nid = "acme"\ndisplay_name = "Acme AI"\nbase_url = "https://api.acme.test/v1"\n'
        'api_key_env = "ACME_API_KEY"\n\n[[models]]\nid = "acme-1"\ndisplay_name = "Acme One"\ntier = "fast"\n'
        'context_window = 32000\nmax_output_tokens = 4000\ninput_cost_per_m = 0.5\noutput_cost_per_m = 1.5\n'
        'aliases = ["acme"]\n'
    )
    models = home / "registry" / "models"
    models.mkdir(parents=True)
    (models / "openai.json").write_text(json.dumps({"models": [
        {"id": "gpt-4o", "provider": "openai", "display_name": "GPT-4o (registry)", "input_cost_per_m": 2.0,
         "output_cost_per_m": 9.0, "context_window": 128000, "max_output_tokens": 16384},
        {"id": "bad model id", "provider": "openai"},
        {"id": "orphan", "provider": "nobody"},
    ]}))
    catalog, report = build_catalog(home)
    assert catalog.provider("acme").base_url == "https://api.acme.test/v1"
    assert catalog.find_model("acme").id == "acme-1"
    assert catalog.find_model("gpt-4o").display_name == "GPT-4o (registry)"
    assert catalog.find_model("gpt-4o").output_cost_per_m == 9.0
    assert report.registry_files == 2
    assert any("bad model id" in e or "model #2" in e for e in report.errors)
    assert any("nobody" in e for e in report.errors)


def test_broken_registry_file_is_reported_not_fatal(home):
    folder = home / "registry" / "providers"
    folder.mkdir(parents=True)
    (folder / "broken.toml").write_text("[provider\nid=")
    catalog, report = build_catalog(home)
    assert len(catalog.models) >= 130
    assert any("broken.toml" in e for e in report.errors)


def test_custom_models_and_user_aliases_win(home):
    write_custom_models(home, [ModelEntry(id="gpt-4o", provider="openai", display_name="My GPT-4o",
                                          input_cost_per_m=1, output_cost_per_m=2, source="custom")])
    write_user_aliases(home, {"sonnet": "gpt-4o", "mine": "claude-haiku-4-5-20251001"}, {"opus"})
    catalog, report = build_catalog(home)
    assert report.custom_models == 1 and report.user_aliases == 2
    assert catalog.find_model("gpt-4o").display_name == "My GPT-4o"
    assert catalog.find_model("gpt-4o").source == "custom"
    assert catalog.find_model("sonnet").id == "gpt-4o"  # user alias overrides the bundled one
    assert catalog.find_model("mine").id == "claude-haiku-4-5-20251001"
    assert "opus" not in catalog.aliases and catalog.find_model("opus") is None


def test_aliases_file_keeps_user_comments(home):
    (home / "aliases.toml").write_text('# my notes\nremoved = []\n\n[aliases]\n"fast" = "gpt-4o-mini"\n')
    write_user_aliases(home, {"fast": "gpt-4o-mini", "smart": "gpt-4.1"}, set())
    text = (home / "aliases.toml").read_text()
    assert "# my notes" in text and 'smart = "gpt-4.1"' in text
    catalog, _ = build_catalog(home)
    assert catalog.find_model("smart").id == "gpt-4.1"


def test_invalid_user_files_are_skipped_with_errors(home):
    (home / "custom_models.json").write_text(json.dumps([{"id": "ok-model", "provider": "openai"},
                                                         {"id": "", "provider": "openai"}, "nonsense"]))
    (home / "aliases.toml").write_text('[aliases]\n"Bad Alias!" = "gpt-4o"\n"good" = "gpt-4o"\n')
    catalog, report = build_catalog(home)
    assert catalog.find_model("ok-model").tier == "custom"
    assert catalog.find_model("good").id == "gpt-4o"
    assert len(report.errors) == 3


def test_url_overrides_config_wins_over_api_file(home):
    (home / "provider_urls.json").write_text(json.dumps({"vllm": "http://10.0.0.5:8000/v1",
                                                         "lmstudio": "http://10.0.0.6:1234/v1"}))
    catalog, _ = build_catalog(home, {"vllm": "http://10.0.0.9:8000/v1"})
    assert catalog.provider("vllm").base_url == "http://10.0.0.9:8000/v1"
    assert catalog.provider("lmstudio").base_url == "http://10.0.0.6:1234/v1"
    assert catalog.provider("vllm").spec().base_url == "http://10.0.0.9:8000/v1"


async def test_call_cost_prefers_the_serving_provider(make_kernel):
    from librefang_providers import plugin
    from librefang_providers.service import catalog_service

    kernel = await make_kernel(plugins={"providers": plugin}, load_entry_points=False)
    service = catalog_service(kernel)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    # The same id at three providers, three prices: the one that served is billed.
    assert await service.call_cost("nebius", "meta-llama/Llama-3.3-70B-Instruct", usage) == pytest.approx(0.53)
    assert await service.call_cost("hyperbolic", "meta-llama/Llama-3.3-70B-Instruct", usage) == pytest.approx(0.8)
    assert await service.call_cost("openai", "gpt-4o", usage) == pytest.approx(12.5)
    assert await service.call_cost("openai", "not-in-catalog", usage) is None

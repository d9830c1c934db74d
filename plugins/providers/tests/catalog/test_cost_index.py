"""The per-turn pricing lookup (``Catalog.priced_model``, behind ``CatalogService.call_cost``) is memoised
per catalog snapshot: it must answer exactly what the unmemoised lookup answers, for every catalog model,
qualified names, aliases and unknown names, and every write path (custom models, aliases, a reload
after a file changed on disk) must be seen by the very next call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from librefang_providers.catalog import MAX_PRICED, Catalog, ModelEntry, cost
from librefang_providers.catalog_store import build_catalog
from librefang_providers.service import catalog_service
from librefang_providers.types import Usage


def unmemoised(catalog: Catalog, provider: str, model: str) -> ModelEntry | None:
    """The lookup as ``call_cost`` did it before the memo (model_in, then qualified, then the id)."""
    entry = catalog.model_in(provider, model) or catalog.find_model(f"{provider}/{model}")
    if entry is None:
        entry = catalog.find_model(model)
    return entry


def test_memoised_lookup_matches_the_plain_one_on_the_whole_catalog(tmp_path: Path) -> None:
    catalog, _ = build_catalog(tmp_path)
    providers = list(catalog.providers)
    cases: list[tuple[str, str]] = []
    for index, model in enumerate(catalog.models):
        other = providers[(index + 7) % len(providers)]
        cases += [
            (model.provider, model.id),
            (model.provider, model.id.upper()),
            (other, model.id),  # served by another provider: priced by the id alone
            ("no-such-provider", f"{model.provider}/{model.id}"),  # a qualified name as the model
            (other, f"{model.provider}:{model.id}"),
            (model.provider, model.id + "-unknown"),
        ]
        cases += [(model.provider, alias) for alias in model.aliases]
    cases += [(p, alias) for p in providers[:3] for alias in catalog.aliases]
    cases += [("openai", "not-in-catalog"), ("openai", ""), ("", "gpt-4o"), ("openai", "  "), ("x", "/")]
    assert len(cases) > 1000
    for provider, model in cases:
        expected = unmemoised(catalog, provider, model)
        assert catalog.priced_model(provider, model) is expected, (provider, model)
        assert catalog.priced_model(provider, model) is expected, (provider, model)  # from the memo


def test_the_memo_is_bounded_and_stays_correct(tmp_path: Path) -> None:
    catalog, _ = build_catalog(tmp_path)
    for index in range(MAX_PRICED * 2 + 5):
        assert catalog.priced_model("openai", f"served-name-{index}") is None
        assert len(catalog._priced) <= MAX_PRICED
    assert catalog.priced_model("openai", "gpt-4o") is catalog.model_in("openai", "gpt-4o")


@pytest.mark.parametrize("usage", [
    Usage(input_tokens=1_000_000, output_tokens=500_000, cache_read_tokens=200_000, cache_write_tokens=100_000),
    Usage(input_tokens=-5, output_tokens=10),
    Usage(input_tokens=10, output_tokens=10, cache_read_tokens=50, cache_write_tokens=50),
    Usage(input_tokens=True, output_tokens=3),  # not a plain int: the generic path
    Usage(input_tokens="12", output_tokens=None),  # type: ignore[arg-type]
    {"prompt_tokens": 1000, "completion_tokens": 2000, "cache_read_input_tokens": 100},
])
def test_cost_of_a_usage_object_matches_the_mapping_form(tmp_path: Path, usage: Any) -> None:
    catalog, _ = build_catalog(tmp_path)
    model = catalog.find_model("claude-sonnet-4-5-20250929")
    assert model is not None and model.cache_read_cost_per_m is not None
    if isinstance(usage, Usage):
        mapping = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                   "cache_read_tokens": usage.cache_read_tokens, "cache_write_tokens": usage.cache_write_tokens}
        assert cost(model, usage) == cost(model, mapping)
    else:
        assert cost(model, usage) == round((900 * 3.0 + 100 * model.cache_read_cost_per_m + 2000 * 15.0) / 1e6, 10)


async def test_every_write_path_is_seen_by_the_next_call(api: Any, provider_kernel: Any) -> None:
    service = catalog_service(provider_kernel)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert await service.call_cost("together", "my-org/finetune-1", usage) is None
    assert await service.call_cost("openai", "my-fast", usage) is None

    # a custom model added through the API is priced on the next call, and unpriced once removed
    response = await api.post("/api/models/custom", json={
        "id": "my-org/finetune-1", "provider": "together", "input_cost_per_m": 0.5, "output_cost_per_m": 1.0,
    })
    assert response.status_code == 201
    assert await service.call_cost("together", "my-org/finetune-1", usage) == pytest.approx(1.5)
    assert (await api.delete("/api/models/custom/my-org/finetune-1")).status_code == 200
    assert await service.call_cost("together", "my-org/finetune-1", usage) is None

    # an alias added through the API prices what it points at; removed, it prices nothing
    mini = await service.call_cost("openai", "gpt-4o-mini", usage)
    assert mini is not None
    assert (await api.post("/api/models/aliases", json={"alias": "my-fast", "model_id": "gpt-4o-mini"})).status_code == 201
    assert await service.call_cost("openai", "my-fast", usage) == mini
    assert (await api.delete("/api/models/aliases/my-fast")).status_code == 200
    assert await service.call_cost("openai", "my-fast", usage) is None

    # a file changed on disk, then a reload (POST /api/catalog/update does the same rebuild)
    (provider_kernel.home / "custom_models.json").write_text(json.dumps([
        {"id": "gpt-4o", "provider": "openai", "input_cost_per_m": 1.0, "output_cost_per_m": 1.0},
    ]))
    before = await service.call_cost("openai", "gpt-4o", usage)
    assert before == pytest.approx(12.5)  # the snapshot does not change until a rebuild
    await service.reload()
    assert await service.call_cost("openai", "gpt-4o", usage) == pytest.approx(2.0)
    response = await api.post("/api/catalog/update", json={})
    assert response.status_code == 200, await response.get_json()
    assert await service.call_cost("openai", "gpt-4o", usage) == pytest.approx(2.0)

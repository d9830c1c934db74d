"""HTTP tests of /api/models*: listing and filters, lookup by id/alias/slashed id, aliases, custom models."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def config_text() -> str:
    # Local servers point at a closed port so availability does not depend on the machine.
    return '[providers.provider_urls]\nollama = "http://127.0.0.1:9"\nvllm = "http://127.0.0.1:9/v1"\n' \
           'lmstudio = "http://127.0.0.1:9/v1"\nllamacpp = "http://127.0.0.1:9/v1"\n' \
           'localai = "http://127.0.0.1:9/v1"\njan = "http://127.0.0.1:9/v1"\n'


async def test_list_models_has_the_whole_catalog_with_reference_fields(api):
    response = await api.get("/api/models")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["total"] >= 130 and len(body["models"]) == body["total"]
    assert body["available"] == 0  # no key anywhere, local servers offline
    entry = next(m for m in body["models"] if m["id"] == "claude-sonnet-4-5-20250929")
    for key in ("id", "display_name", "provider", "tier", "modality", "context_window", "max_output_tokens",
                "input_cost_per_m", "output_cost_per_m", "pricing_known", "supports_tools", "supports_vision",
                "supports_streaming", "supports_thinking", "capabilities_catalog", "aliases", "available"):
        assert key in entry, key
    assert entry["aliases"] == ["claude-sonnet", "claude-sonnet-4-5", "sonnet"]
    assert entry["available"] is False


async def test_filters_by_provider_tier_and_availability(api, monkeypatch):
    body = await (await api.get("/api/models?provider=groq")).get_json()
    assert body["models"] and {m["provider"] for m in body["models"]} == {"groq"}
    body = await (await api.get("/api/models?provider=google&tier=fast")).get_json()
    assert body["models"] and all(m["provider"] == "gemini" and m["tier"] == "fast" for m in body["models"])
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-deepseek")
    body = await (await api.get("/api/models?available=true")).get_json()
    assert {m["provider"] for m in body["models"]} == {"deepseek"}
    assert body["available"] == len(body["models"]) == 2
    body = await (await api.get("/api/models?available=false&provider=deepseek")).get_json()
    assert body["models"] == []


async def test_list_models_bad_filters(api):
    response = await api.get("/api/models?tier=legendary")
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "invalid_query"
    response = await api.get("/api/models?available=maybe")
    assert response.status_code == 400
    response = await api.get("/api/models?provider=nope")
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "provider_not_found"
    response = await api.get("/api/models?provider=" + "x" * 100)
    assert response.status_code == 400
    response = await api.get("/api/models?unknown=1")
    assert response.status_code == 400


async def test_get_model_by_id_alias_and_ids_with_slashes(api):
    body = await (await api.get("/api/models/gpt-4o-mini")).get_json()
    assert body["provider"] == "openai" and body["input_cost_per_m"] == 0.15
    body = await (await api.get("/api/models/opus")).get_json()
    assert body["id"] == "claude-opus-4-5-20251101"
    body = await (await api.get("/api/models/accounts/fireworks/models/gpt-oss-120b")).get_json()
    assert body["provider"] == "fireworks"
    body = await (await api.get("/api/models/meta-llama/llama-4-scout-17b-16e-instruct")).get_json()
    assert body["provider"] == "groq" and body["supports_vision"] is True
    body = await (await api.get("/api/models/nebius/meta-llama/Llama-3.3-70B-Instruct")).get_json()
    assert body["provider"] == "nebius"
    # Also under the versioned prefix.
    assert (await api.get("/api/v1/models/sonnet")).status_code == 200


async def test_get_model_unknown_and_invalid(api):
    response = await api.get("/api/models/no-such-model")
    assert response.status_code == 404
    body = await response.get_json()
    assert body["code"] == "model_not_found" and body["request_id"]
    response = await api.get("/api/models/a..b")
    assert response.status_code == 400
    response = await api.get("/api/models/" + "m" * 300)
    assert response.status_code == 400
    response = await api.get("/api/models/bad%20id")
    assert response.status_code == 400


async def test_alias_lifecycle_is_persisted(api, provider_kernel):
    response = await api.post("/api/models/aliases", json={"alias": "My-Fast", "model_id": "gpt-4o-mini"})
    assert response.status_code == 201
    assert await response.get_json() == {"alias": "my-fast", "model_id": "gpt-4o-mini", "status": "created"}
    assert 'my-fast = "gpt-4o-mini"' in (provider_kernel.home / "aliases.toml").read_text()
    body = await (await api.get("/api/models/my-fast")).get_json()
    assert body["id"] == "gpt-4o-mini" and "my-fast" in body["aliases"]
    listed = await (await api.get("/api/models/aliases")).get_json()
    assert {"alias": "my-fast", "model_id": "gpt-4o-mini", "user_defined": True} in listed["aliases"]
    assert {"alias": "sonnet", "model_id": "claude-sonnet-4-5-20250929", "user_defined": False} in listed["aliases"]
    assert listed["total"] == len(listed["aliases"])

    assert (await api.delete("/api/models/aliases/my-fast")).status_code == 200
    assert (await api.get("/api/models/my-fast")).status_code == 404
    # A bundled alias can be deleted too, and stays deleted after a rebuild from disk.
    assert (await api.delete("/api/models/aliases/sonnet")).status_code == 200
    from librefang_providers.service import catalog_service

    await catalog_service(provider_kernel).reload()
    assert (await api.get("/api/models/sonnet")).status_code == 404


async def test_alias_bad_input(api):
    for body, status in [
        ({"alias": "x", "model_id": "no-such-model"}, 404),
        ({"alias": "sonnet", "model_id": "gpt-4o"}, 409),
        ({"alias": "gpt-4o-mini", "model_id": "gpt-4o"}, 409),
        ({"alias": "has space", "model_id": "gpt-4o"}, 400),
        ({"alias": "a" * 65, "model_id": "gpt-4o"}, 400),
        ({"alias": "ok"}, 400),
        ({"alias": "ok", "model_id": "gpt-4o", "extra": 1}, 400),
    ]:
        response = await api.post("/api/models/aliases", json=body)
        assert response.status_code == status, (body, await response.get_json())
    response = await api.post("/api/models/aliases", data="{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert (await api.delete("/api/models/aliases/never-existed")).status_code == 404
    assert (await api.delete("/api/models/aliases/BAD!")).status_code == 400


async def test_custom_model_lifecycle_wins_over_builtin(api, provider_kernel):
    response = await api.post("/api/models/custom", json={
        "id": "my-org/finetune-1", "provider": "together", "context_window": 32000, "max_output_tokens": 4000,
        "input_cost_per_m": 0.5, "output_cost_per_m": 1.0, "aliases": ["ft1"],
    })
    assert response.status_code == 201
    assert await response.get_json() == {"id": "my-org/finetune-1", "provider": "together", "status": "added",
                                         "replaces_builtin": False}
    saved = json.loads((provider_kernel.home / "custom_models.json").read_text())
    assert saved[0]["id"] == "my-org/finetune-1"
    body = await (await api.get("/api/models/ft1")).get_json()
    assert body["id"] == "my-org/finetune-1" and body["tier"] == "custom" and body["is_custom"] is True

    # Same id as a bundled model: the custom entry wins, deleting it brings the bundled one back.
    response = await api.post("/api/models/custom", json={"id": "gpt-4o", "provider": "openai",
                                                          "input_cost_per_m": 1.0, "output_cost_per_m": 3.0})
    assert (await response.get_json())["replaces_builtin"] is True
    assert (await (await api.get("/api/models/gpt-4o")).get_json())["input_cost_per_m"] == 1.0
    assert (await api.delete("/api/models/custom/gpt-4o")).status_code == 200
    assert (await (await api.get("/api/models/gpt-4o")).get_json())["input_cost_per_m"] == 2.5

    assert (await api.delete("/api/models/custom/together/my-org/finetune-1")).status_code == 200
    assert (await api.get("/api/models/my-org/finetune-1")).status_code == 404


async def test_custom_model_bad_input(api):
    base = {"id": "m1", "provider": "openai"}
    for body, status in [
        ({**base, "provider": "no-such-provider"}, 404),
        ({**base, "context_window": 0}, 400),
        ({**base, "input_cost_per_m": -1}, 400),
        ({**base, "tier": "legendary"}, 400),
        ({**base, "id": "../../etc/passwd x"}, 400),
        ({**base, "aliases": ["sonnet"]}, 409),
        ({"provider": "openai"}, 400),
    ]:
        response = await api.post("/api/models/custom", json=body)
        assert response.status_code == status, (body, await response.get_json())
    assert (await api.post("/api/models/custom", json=base)).status_code == 201
    assert (await api.post("/api/models/custom", json=base)).status_code == 409
    assert (await api.delete("/api/models/custom/not-custom-at-all")).status_code == 404
    assert (await api.delete("/api/models/custom/gpt-4o-mini")).status_code == 404  # bundled, not custom
    assert (await api.delete("/api/models/custom/a..b")).status_code == 400

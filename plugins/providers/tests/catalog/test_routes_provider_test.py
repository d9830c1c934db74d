"""POST /api/providers/{name}/test: a real short request through the driver registry, against the
fake provider server speaking each wire format."""

from __future__ import annotations

import json

import pytest

KEY = "sk-live-test-key-abcdef0123456789"


@pytest.fixture
def config_text(fake_llm) -> str:
    # Catalog providers of each wire format aimed at the fake server; no retries, so faults are fast.
    return (
        "[providers]\nprovider_max_retries = 0\nprovider_test_timeout_secs = 1.5\n\n[providers.provider_urls]\n"
        f'groq = "{fake_llm.base_url("openai")}"\nanthropic = "{fake_llm.base_url("anthropic")}"\n'
        f'gemini = "{fake_llm.base_url("gemini")}"\nollama = "{fake_llm.base_url("ollama")}"\n'
        f'lmstudio = "{fake_llm.base_url("openai")}"\n'
    )


@pytest.mark.parametrize(("provider", "fmt", "model"), [
    ("groq", "openai", "llama-3.1-8b-instant"),
    ("anthropic", "anthropic", "claude-haiku-4-5-20251001"),
    ("gemini", "gemini", "gemini-2.5-flash-lite"),
])
async def test_provider_test_sends_a_real_short_request(api, provider_kernel, fake_llm, provider, fmt, model):
    provider_kernel.vault.set(f"{provider.upper()}_API_KEY", KEY)
    fake_llm.script(text="pong", usage={"input": 1_000_000, "output": 1_000_000})
    response = await api.post(f"/api/providers/{provider}/test")
    assert response.status_code == 200, await response.get_json()
    body = await response.get_json()
    assert body["status"] == "ok" and body["provider"] == provider and body["model"] == model
    assert body["reply"] == "pong" and body["latency_ms"] >= 0
    assert body["usage"]["input_tokens"] == 1_000_000 and body["usage"]["output_tokens"] == 1_000_000
    catalog_model = await (await api.get(f"/api/models/{provider}/{model}")).get_json()
    assert body["cost_usd"] == pytest.approx(catalog_model["input_cost_per_m"] + catalog_model["output_cost_per_m"])
    sent = fake_llm.requests[-1]
    assert sent.format == fmt and sent.model == model
    assert KEY not in json.dumps(body)
    listed = await (await api.get("/api/providers")).get_json()
    assert next(p for p in listed["providers"] if p["id"] == provider)["last_test_status"] == "ok"


async def test_local_provider_test_needs_no_key_and_picks_a_served_model(api, fake_llm):
    fake_llm.script(text="pong")
    body = await (await api.post("/api/providers/ollama/test?model=fake-model")).get_json()
    assert body["status"] == "ok" and fake_llm.requests[-1].format == "ollama"
    # lmstudio has no catalog models: the test asks the server which models it serves.
    fake_llm.script(text="pong")
    body = await (await api.post("/api/providers/lmstudio/test")).get_json()
    assert body["model"] == fake_llm.models[0]


async def test_provider_failure_returns_upstream_status_and_scrubbed_message(api, provider_kernel, fake_llm):
    provider_kernel.vault.set("GROQ_API_KEY", KEY)
    fake_llm.script(fault="auth")  # the fake echoes the presented key in its message, like real providers
    response = await api.post("/api/providers/groq/test")
    assert response.status_code == 502
    text = await response.get_data(as_text=True)
    assert KEY not in text and KEY[:20] not in text
    body = json.loads(text)
    assert body["code"] == "provider_error"
    assert body["details"]["upstream_status"] == 401 and body["details"]["upstream_code"] == "auth_failed"
    assert "Incorrect API key provided" in body["details"]["upstream_message"]

    fake_llm.script(fault="model_not_found")
    body = await (await api.post("/api/providers/groq/test?model=no-such-model")).get_json()
    assert body["details"]["upstream_status"] == 404 and "no-such-model" in body["details"]["upstream_message"]

    fake_llm.script(fault="server_error")
    response = await api.post("/api/providers/groq/test")
    assert response.status_code == 502 and (await response.get_json())["details"]["upstream_status"] == 500


async def test_provider_test_times_out_on_a_stalled_provider(api, provider_kernel, fake_llm):
    provider_kernel.vault.set("GROQ_API_KEY", KEY)
    fake_llm.script(fault="stall", text="never finishes")
    response = await api.post("/api/providers/groq/test")
    assert response.status_code == 502
    assert (await response.get_json())["code"] in ("provider_error", "provider_timeout")


async def test_provider_test_bad_input(api):
    response = await api.post("/api/providers/no-such-provider/test")
    assert response.status_code == 404
    response = await api.post("/api/providers/groq/test")  # no key configured anywhere
    assert response.status_code == 400 and (await response.get_json())["code"] == "missing_api_key"
    response = await api.post("/api/providers/azure-openai/test")  # needs a per-resource base URL
    assert response.status_code == 400 and (await response.get_json())["code"] == "base_url_required"
    response = await api.post("/api/providers/ollama/test?model=bad%20model")
    assert response.status_code == 400
    response = await api.post("/api/providers/ollama/test?unexpected=1")
    assert response.status_code == 400

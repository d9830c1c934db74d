"""HTTP tests of /api/providers*: listing with auth status, details, keys in the vault, URL overrides,
Ollama detection, and the route table's auth and rate costs."""

from __future__ import annotations

import json

import pytest

CLOSED = "http://127.0.0.1:9"  # nothing listens on the discard port: a local server that is off
KEY = "sk-groq-test-key-0123456789"


@pytest.fixture
def config_text(fake_llm) -> str:
    return (
        "[providers]\nprovider_max_retries = 0\n\n[providers.provider_urls]\n"
        f'ollama = "{fake_llm.base_url("ollama")}"\nvllm = "{CLOSED}/v1"\nlmstudio = "{CLOSED}/v1"\n'
        f'llamacpp = "{CLOSED}/v1"\nlocalai = "{CLOSED}/v1"\njan = "{CLOSED}/v1"\n'
    )


async def test_list_providers_with_auth_status(api, monkeypatch, fake_llm):
    monkeypatch.setenv("MISTRAL_API_KEY", "mistral-test-key")
    response = await api.get("/api/providers")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["total"] == len(body["providers"]) >= 40
    rows = {p["id"]: p for p in body["providers"]}
    for key in ("id", "display_name", "api_key_env", "base_url", "key_required", "auth_status", "model_count",
                "signup_url", "is_local", "is_custom"):
        assert key in rows["anthropic"], key
    assert rows["anthropic"]["auth_status"] == "missing"
    assert rows["mistral"]["auth_status"] == "configured"
    assert rows["vllm"]["auth_status"] == "local_offline" and rows["vllm"]["reachable"] is False
    assert rows["ollama"]["auth_status"] == "not_required" and rows["ollama"]["reachable"] is True
    assert rows["ollama"]["discovered_models"] == fake_llm.models
    assert rows["anthropic"]["model_count"] >= 5 and rows["anthropic"]["api_key_env"] == "ANTHROPIC_API_KEY"
    assert "mistral-test-key" not in json.dumps(body)


async def test_auth_status_from_config_reference_and_vault(make_kernel, librefang_home, monkeypatch):
    from librefang.app import build_app
    from librefang.testing import make_client
    from librefang_providers import plugin

    monkeypatch.setenv("MY_TOGETHER", "together-key")
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key")  # Gemini's alternate variable
    config = ('[providers.provider_api_keys]\ntogether = "env:MY_TOGETHER"\ngroq = "vault:GROQ_KEY"\n'
              'cerebras = "env:UNSET_VARIABLE"\n')
    kernel = await make_kernel(plugins={"providers": plugin}, load_entry_points=False, config=config)
    kernel.vault.set("GROQ_KEY", "groq-key")
    kernel.vault.set("XAI_API_KEY", "xai-key")
    api = make_client(build_app(kernel))
    for name, status in [("together", "configured"), ("groq", "configured"), ("cerebras", "missing"),
                         ("xai", "configured"), ("openai", "missing"), ("gemini", "configured")]:
        body = await (await api.get(f"/api/providers/{name}")).get_json()
        assert body["auth_status"] == status, name


async def test_get_provider_details_and_bad_names(api):
    body = await (await api.get("/api/providers/claude")).get_json()  # an alias
    assert body["id"] == "anthropic" and body["api_format"] == "anthropic"
    assert body["model_count"] == len(body["models"]) >= 5
    assert {"id", "tier", "input_cost_per_m", "available"} <= set(body["models"][0])
    body = await (await api.get("/api/providers/ollama")).get_json()
    assert body["is_local"] is True and body["reachable"] is True
    for name in ("no-such-provider", "x" * 300, "..%2F..%2Fetc"):
        response = await api.get(f"/api/providers/{name}")
        assert response.status_code == 404, name
        assert (await response.get_json())["code"] in ("provider_not_found", "not_found")


async def test_key_is_stored_in_the_vault_and_never_returned(api, provider_kernel):
    response = await api.post("/api/providers/groq/key", json={"key": f"  {KEY}  "})
    assert response.status_code == 200
    text = await response.get_data(as_text=True)
    assert KEY not in text
    body = json.loads(text)
    assert body == {"status": "saved", "provider": "groq", "auth_status": "configured", "stored_in": "vault",
                    "secret_name": "GROQ_API_KEY"}
    assert provider_kernel.vault.get("GROQ_API_KEY") == KEY
    assert KEY.encode() not in (provider_kernel.home / "vault.enc").read_bytes()
    listed = await (await api.get("/api/providers")).get_data(as_text=True)
    assert KEY not in listed
    assert next(p for p in json.loads(listed)["providers"] if p["id"] == "groq")["auth_status"] == "configured"
    models = await (await api.get("/api/models?available=true&provider=groq")).get_json()
    assert models["models"] and all(m["available"] for m in models["models"])
    entries, _ = await provider_kernel.audit.recent(20)
    key_set = [e for e in entries if e["action"] == "ProviderKeySet"]
    assert key_set and key_set[0]["target"] == "groq"
    assert all(KEY not in json.dumps(e, default=str) for e in entries)

    response = await api.delete("/api/providers/groq/key")
    assert response.status_code == 200
    assert (await response.get_json())["auth_status"] == "missing"
    assert provider_kernel.vault.get("GROQ_API_KEY") is None
    assert (await api.delete("/api/providers/groq/key")).status_code == 404


async def test_key_bad_input(api):
    for body in ({"key": ""}, {"key": "   "}, {"key": "has space"}, {"key": "x" * 5000}, {}, {"key": 42},
                 {"key": "ok-key", "other": 1}):
        response = await api.post("/api/providers/groq/key", json=body)
        assert response.status_code == 400, body
        if isinstance(body.get("key"), str) and len(body["key"].strip()) > 3:
            assert body["key"].strip() not in await response.get_data(as_text=True)  # never echoed
    response = await api.post("/api/providers/groq/key", data="key=abc",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert (await api.post("/api/providers/nope/key", json={"key": "abc123"})).status_code == 404
    assert (await api.delete("/api/providers/nope/key")).status_code == 404


async def test_url_override_is_validated_persisted_and_probed(api, provider_kernel, fake_llm):
    response = await api.put("/api/providers/lmstudio/url", json={"base_url": fake_llm.base_url("openai") + "/"})
    assert response.status_code == 409  # lmstudio's URL is pinned in config.toml by this test's config
    response = await api.put("/api/providers/groq/url", json={"base_url": "https://gateway.example.com/groq/v1/"})
    assert response.status_code == 200
    assert await response.get_json() == {"status": "saved", "provider": "groq",
                                         "base_url": "https://gateway.example.com/groq/v1", "reachable": None,
                                         "latency_ms": None, "discovered_models": []}
    saved = json.loads((provider_kernel.home / "provider_urls.json").read_text())
    assert saved == {"groq": "https://gateway.example.com/groq/v1"}
    body = await (await api.get("/api/providers/groq")).get_json()
    assert body["base_url"] == "https://gateway.example.com/groq/v1"


async def test_url_override_of_a_local_provider_probes_it(make_kernel, fake_llm):
    from librefang.app import build_app
    from librefang.testing import make_client
    from librefang_providers import plugin

    kernel = await make_kernel(plugins={"providers": plugin}, load_entry_points=False, config="")
    api = make_client(build_app(kernel))
    response = await api.put("/api/providers/vllm/url", json={"base_url": fake_llm.base_url("openai")})
    body = await response.get_json()
    assert response.status_code == 200 and body["reachable"] is True
    assert body["discovered_models"] == fake_llm.models
    listed = await (await api.get("/api/providers")).get_json()
    assert next(p for p in listed["providers"] if p["id"] == "vllm")["auth_status"] == "not_required"


async def test_url_bad_input(api):
    for url in ("ftp://example.com/v1", "http://user:pass@example.com/v1", "http://169.254.169.254/v1",
                "https://example.com/v1?key=1", "not a url", "http://metadata.google.internal/", ""):
        response = await api.put("/api/providers/groq/url", json={"base_url": url})
        assert response.status_code == 400, url
        assert "pass@" not in (await response.get_data(as_text=True))
    assert (await api.put("/api/providers/groq/url", json={})).status_code == 400
    assert (await api.put("/api/providers/nope/url", json={"base_url": "https://x.example"})).status_code == 404


async def test_ollama_detect_probes_the_configured_server(api, fake_llm):
    response = await api.get("/api/providers/ollama/detect")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["available"] is True and body["models"] == fake_llm.models
    assert body["base_url"] == fake_llm.base_url("ollama") and body["latency_ms"] >= 0


async def test_ollama_detect_when_ollama_is_off(make_kernel):
    from librefang.app import build_app
    from librefang.testing import make_client
    from librefang_providers import plugin

    config = f'[providers]\nollama_detect_timeout_secs = 0.5\n[providers.provider_urls]\nollama = "{CLOSED}"\n'
    kernel = await make_kernel(plugins={"providers": plugin}, load_entry_points=False, config=config)
    api = make_client(build_app(kernel))
    body = await (await api.get("/api/providers/ollama/detect")).get_json()
    assert body["available"] is False and body["models"] == [] and body["error"]
    # Bad input: the detect route takes no parameters and no other method.
    assert (await api.post("/api/providers/ollama/detect")).status_code == 405


async def test_routes_declare_costs_and_require_auth(make_kernel, monkeypatch):
    from librefang.app import build_app
    from librefang.testing import make_client
    from librefang_providers import plugin

    kernel = await make_kernel(plugins={"providers": plugin}, load_entry_points=False,
                               config='api_key = "test-master-key-123456"\n')
    mine = ("/api/models", "/api/catalog", "/api/providers")
    specs = {key: spec for key, spec in kernel.routes.specs.items() if key[1].startswith(mine)}
    assert len(specs) == 18 and all(spec.plugin == "providers" for spec in specs.values())
    assert specs[("GET", "/api/providers")].cost == 1
    assert all(s.cost == 5 for k, s in specs.items() if k != ("GET", "/api/providers"))
    assert not any(s.public for s in specs.values())
    api = make_client(build_app(kernel))
    # A remote peer (not loopback) without a token is refused on every route.
    remote = {"scope_base": {"client": ("203.0.113.9", 40000)}}
    for (method, path) in specs:
        concrete = path.replace("<path:model_id>", "gpt-4o").replace("<alias>", "x").replace(
            "<name>", "groq").replace("<poll_id>", "abc")
        response = await api.open(concrete, method=method, **remote)
        assert response.status_code == 401, (method, path)
    response = await api.get("/api/providers", headers={"Authorization": "Bearer test-master-key-123456"}, **remote)
    assert response.status_code == 200

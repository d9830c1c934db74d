"""HTTP tests of /api/catalog/status and /api/catalog/update (local registry folder and URL source)."""

from __future__ import annotations

import json

import pytest

BUNDLE = {
    "providers": [{"id": "acme", "display_name": "Acme AI", "base_url": "https://api.acme.test/v1",
                   "api_key_env": "ACME_API_KEY", "api_format": "openai"}],
    "models": [{"id": "acme-large", "provider": "acme", "display_name": "Acme Large", "tier": "smart",
                "context_window": 64000, "max_output_tokens": 8000, "input_cost_per_m": 1, "output_cost_per_m": 4}],
}


async def test_status_of_a_fresh_home(api, provider_kernel):
    response = await api.get("/api/catalog/status")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["last_sync"] is None and body["source"] == "bundled"
    assert body["providers"] >= 40 and body["models"] >= 130
    assert body["registry_dir"] == str(provider_kernel.home / "registry")
    assert body["errors"] == [] and body["bundled_version"]


async def test_update_reloads_the_local_registry_folder(api, provider_kernel):
    before = await (await api.get("/api/catalog/status")).get_json()
    folder = provider_kernel.home / "registry" / "providers"
    folder.mkdir(parents=True)
    (folder / "acme.json").write_text(json.dumps(BUNDLE))
    (folder / "broken.toml").write_text("[provider\n")
    response = await api.post("/api/catalog/update", json={})
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "ok" and body["source"] == "local" and body["files_downloaded"] == 0
    assert body["registry_files"] == 1 and body["models_count"] == before["models"] + 1
    assert any("broken.toml" in e for e in body["errors"])
    assert (await (await api.get("/api/models/acme-large")).get_json())["provider"] == "acme"
    status = await (await api.get("/api/catalog/status")).get_json()
    assert status["last_sync"] == body["timestamp"] and status["source"] == "local"
    assert status["providers"] == before["providers"] + 1


REFUSED = [
    ("http://127.0.0.1:{port}/catalog.json", "loopback"),
    ("http://localhost:{port}/catalog.json", "blocked"),
    ("http://[::ffff:127.0.0.1]:{port}/catalog.json", "loopback"),
    ("http://[::1]:{port}/catalog.json", "blocked"),
    ("http://169.254.169.254/latest/meta-data/", "blocked"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://10.0.0.8/catalog.json", "private"),
    ("http://metadata.google.internal/", "blocked"),
    ("http://user:secret@example.com/catalog.json", "credentials"),
    ("ftp://example.com/catalog.json", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("http:///nohost", "host"),
]


async def test_update_from_url_applies_ssrf_rules(api, fake_server):
    fake_server.on("GET", "/catalog.json", BUNDLE)
    port = fake_server.url.rsplit(":", 1)[1]
    for url, why in REFUSED:
        response = await api.post("/api/catalog/update", json={"url": url.format(port=port)})
        assert response.status_code == 400, url
        body = await response.get_json()
        assert body["code"] == "url_refused" and why in body["error"], (url, body)
        assert "secret" not in body["error"]
    assert fake_server.seen == []  # refused before any I/O


async def test_update_body_validation(api):
    assert (await api.post("/api/catalog/update", json={"url": "x" * 3000})).status_code == 400
    assert (await api.post("/api/catalog/update", json={"source": "github"})).status_code == 400
    assert (await api.post("/api/catalog/update")).status_code == 400


class TestAllowListedSource:
    """An operator may open a private host for the catalog source (here the loopback fake)."""

    @pytest.fixture
    def config_text(self) -> str:
        return '[providers]\ncatalog_allowed_hosts = ["127.0.0.1/32"]\n'

    async def test_bundle_is_fetched_stored_and_loaded(self, api, fake_server, provider_kernel):
        fake_server.on("GET", "/catalog.json", BUNDLE)
        response = await api.post("/api/catalog/update", json={"url": fake_server.url + "/catalog.json"})
        assert response.status_code == 200, await response.get_json()
        body = await response.get_json()
        assert body["source"] == "url" and body["files_downloaded"] == 1
        assert fake_server.seen[0].headers["host"] == fake_server.url.split("//")[1]
        stored = provider_kernel.home / "registry" / "providers" / "remote-catalog.json"
        assert json.loads(stored.read_text()) == BUNDLE
        assert (await (await api.get("/api/models/acme-large")).get_json())["input_cost_per_m"] == 1
        # localhost stays blocked by name even when its address range is allowed.
        port = fake_server.url.rsplit(":", 1)[1]
        response = await api.post("/api/catalog/update", json={"url": f"http://localhost:{port}/catalog.json"})
        assert response.status_code == 400

    async def test_upstream_failures_are_bad_gateway(self, api, fake_server):
        fake_server.on("GET", "/500", (500, {}, b"boom"))
        fake_server.on("GET", "/html", (200, {"Content-Type": "text/html"}, b"<html>"))
        fake_server.on("GET", "/empty", {"providers": [], "models": []})
        fake_server.on("GET", "/huge", (200, {}, b"x" * (4 * 1024 * 1024 + 10)))
        fake_server.on("GET", "/redirect", (302, {"Location": "http://169.254.169.254/"}, b""))
        for path, code in [("/500", "upstream_error"), ("/html", "upstream_bad_response"),
                           ("/empty", "upstream_bad_response"), ("/huge", "upstream_too_large"),
                           ("/redirect", "upstream_error")]:
            response = await api.post("/api/catalog/update", json={"url": fake_server.url + path})
            assert response.status_code == 502, path
            assert (await response.get_json())["code"] == code, path
        assert [s.path for s in fake_server.seen].count("/redirect") == 1  # redirects are not followed

    async def test_metadata_range_stays_blocked_even_when_allow_listed(self, api):
        response = await api.post("/api/catalog/update", json={"url": "http://169.254.169.254/x"})
        assert response.status_code == 400

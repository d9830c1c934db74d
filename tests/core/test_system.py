"""System endpoints: content of status, version(s), metrics and the generated OpenAPI document."""

import re

import httpx
import pytest
from librefang.errors import ConfigError
from librefang.openapi import build_openapi
from librefang.testing import start_live_server


async def test_status_lists_plugins_public_routes_and_uptime(client, kernel):
    body = await (await client.get("/api/status")).get_json()
    assert body["status"] == "running"
    assert body["uptime_seconds"] >= 0
    assert "GET /api/health" in body["public_routes"]
    assert "POST /api/shutdown" not in body["public_routes"]
    assert body["event_loop"] == "asyncio"  # the test's own loop (pytest-asyncio)
    names = {p["name"] for p in body["plugins"]}
    assert names == set(kernel.plugins.records)
    for plugin in body["plugins"]:
        assert {"name", "version", "hooks", "routes", "error"} <= set(plugin)


async def test_version_and_versions_shapes(client):
    version = await (await client.get("/api/version")).get_json()
    assert version["name"] == "librefang"
    assert version["api"] == {"current": "v1", "supported": ["v1"], "deprecated": []}
    assert "hostname" not in version
    versions = await (await client.get("/api/versions")).get_json()
    assert versions["details"][0]["url_prefix"] == "/api/v1"
    assert "<version>" in versions["negotiation"]["media_type_pattern"]


async def test_metrics_count_requests_by_route_template_and_status(client):
    for _ in range(3):
        await client.get("/api/health")
    await client.get("/api/does-not-exist")
    text = await (await client.get("/api/metrics")).get_data(as_text=True)
    match = re.search(r'librefang_http_requests_total\{method="GET",route="/api/health",status="200"\} (\d+)', text)
    assert match and float(match.group(1)) >= 3
    assert 'route="<unmatched>",status="404"' in text
    assert "librefang_http_request_duration_seconds_bucket" in text
    assert "librefang_http_requests_in_flight" in text
    assert "librefang_process_rss_bytes" in text
    assert "librefang_plugins_loaded" in text


async def test_openapi_describes_every_registered_route_with_schemas(client, kernel):
    document = await (await client.get("/api/openapi.json")).get_json()
    assert document["openapi"].startswith("3.")
    for (method, path), spec in kernel.routes.specs.items():
        openapi_path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
        assert openapi_path in document["paths"], path
        operation = document["paths"][openapi_path][method.lower()]
        assert operation["x-rate-cost"] == spec.cost
        if spec.body is not None:
            assert "requestBody" in operation, path
        if spec.response is not None:
            ref = operation["responses"][str(spec.status)]["content"]["application/json"]["schema"]
            assert ref, path
        if not spec.public:
            assert "401" in operation["responses"], path
    # every $ref resolves to a component
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(document).replace("'", '"')))
    assert refs <= set(document["components"]["schemas"])


async def test_openapi_is_consistent_with_direct_build(kernel, client):
    served = await (await client.get("/api/openapi.json")).get_json()
    assert set(served["paths"]) == set(build_openapi(kernel)["paths"])


async def test_shutdown_requires_auth_from_remote_and_sets_the_event(make_kernel, monkeypatch):
    import asyncio

    from librefang.app import build_app
    from librefang.testing import make_client

    monkeypatch.setenv("LIBREFANG_API_KEY", "k" * 32)
    kernel = await make_kernel()
    kernel.shutdown_requested = asyncio.Event()
    client = make_client(build_app(kernel))
    denied = await client.post("/api/shutdown")
    assert denied.status_code == 401
    assert not kernel.shutdown_requested.is_set()
    accepted = await client.post("/api/shutdown", headers={"Authorization": "Bearer " + "k" * 32})
    assert accepted.status_code == 202
    assert (await accepted.get_json()) == {"status": "shutting_down"}
    assert kernel.shutdown_requested.is_set()
    recent = await client.get("/api/audit/recent?n=5", headers={"X-API-Key": "k" * 32})
    actions = [e["action"] for e in (await recent.get_json())["items"]]
    assert "Shutdown" in actions


@pytest.mark.parametrize("choice, expected", [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_daemon_runs_on_the_configured_event_loop(librefang_home, choice, expected):
    """``[core] event_loop``: the loop a daemon serves on, as /api/status reports it (uvloop is a
    dependency of the core wherever it installs, so "auto" picks it)."""
    (librefang_home / "config.toml").write_text(f'event_loop = "{choice}"\n')
    server = start_live_server(librefang_home, plugins={}, load_entry_points=False)
    try:
        status = httpx.get(server.url + "/api/status", timeout=10)
        assert status.status_code == 200 and status.json()["event_loop"] == expected
        assert httpx.get(server.url + "/api/health", timeout=10).json()["status"] == "ok"
    finally:
        server.stop()


def test_an_unknown_event_loop_is_a_config_error(librefang_home):
    (librefang_home / "config.toml").write_text('event_loop = "trio"\n')
    with pytest.raises(ConfigError, match="event_loop"):
        start_live_server(librefang_home, plugins={}, load_entry_points=False)

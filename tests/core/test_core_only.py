"""The core alone (``LIBREFANG_LOAD_PLUGINS=""``): the daemon starts and serves the system endpoints,
and a route of a plugin that is not loaded is a JSON 404."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from librefang.testing import start_live_server

SYSTEM_GETS = [
    "/api/health",
    "/api/health/detail",
    "/api/status",
    "/api/version",
    "/api/versions",
    "/api/config",
    "/api/config/schema",
    "/api/openapi.json",
]


@pytest.fixture
async def core_only(librefang_home, monkeypatch):
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    server = await asyncio.to_thread(start_live_server, librefang_home)
    yield server
    await asyncio.to_thread(server.stop)


async def test_core_alone_serves_system_endpoints_and_json_404_for_plugin_routes(core_only):
    assert core_only.kernel.plugins.records == {}  # no entry point was even imported
    async with httpx.AsyncClient(base_url=core_only.url) as http:
        for path in SYSTEM_GETS:
            for prefix_path in (path, path.replace("/api/", "/api/v1/", 1)):
                response = await http.get(prefix_path)
                assert response.status_code == 200, (prefix_path, response.text)
                assert response.headers["content-type"].startswith("application/json")
                assert response.headers["x-request-id"]

        status = (await http.get("/api/status")).json()
        assert status["plugins"] == [] and status["status"] == "running"
        assert "agent_count" not in status  # only the agents plugin contributes it
        detail = (await http.get("/api/health/detail")).json()
        assert detail["plugins"] == {"loaded": [], "failed": {}}

        metrics = await http.get("/api/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        openapi = (await http.get("/api/openapi.json")).json()
        assert "/api/health" in openapi["paths"] and not any("agents" in p for p in openapi["paths"])

        for method, path in [("GET", "/api/agents"), ("POST", "/api/agents"), ("GET", "/api/v1/agents"),
                             ("GET", "/api/agents/00000000-0000-0000-0000-000000000000/message")]:
            response = await http.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 404, (method, path, response.text)
            body = response.json()
            assert body["code"] == "not_found" and body["error"]
            assert body["request_id"] == response.headers["x-request-id"]

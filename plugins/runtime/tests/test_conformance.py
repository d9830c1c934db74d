"""Plugin conformance: every route of the runtime is declared with a cost, needs a credential,
appears in the OpenAPI document, and stopping the plugin leaves no service, route or task behind."""

from __future__ import annotations

from typing import Any

import pytest
from librefang.app import build_app
from librefang.testing import make_client
from quart.testing import WebsocketResponseError

REMOTE = {"client": ("203.0.113.20", 5000)}
RUNTIME_ROUTERS = ("runtime", "runtime_sessions", "runtime_openai", "runtime_tools", "runtime_ws", "runtime_stats")


def concrete(path: str) -> str:
    return (path.replace("<agent_id>", "00000000-0000-4000-8000-000000000000")
            .replace("<session_id>", "00000000-0000-4000-8000-000000000001")
            .replace("<label>", "x").replace("<name>", "system_time"))


async def test_routes_declared_authenticated_and_documented(start_runtime: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("LIBREFANG_API_KEY", "k" * 40)
    kernel, _ = await start_runtime()
    client = make_client(build_app(kernel))
    specs = [s for s in kernel.routes.specs.values() if s.plugin == "runtime"]
    assert {s.endpoint.split(".")[0] for s in specs} == set(RUNTIME_ROUTERS)
    assert len(specs) >= 30
    document = await (await client.get("/api/openapi.json")).get_json()
    for spec in specs:
        assert spec.cost >= 1 and not spec.public, spec
        path = concrete(spec.path)
        if spec.websocket:
            with pytest.raises(WebsocketResponseError) as info:
                async with client.websocket(path, scope_base=REMOTE) as ws:
                    await ws.receive()
            assert info.value.response.status_code == 401
            continue
        response = await client.open(path, method=spec.method, json={}, scope_base=REMOTE)
        assert response.status_code == 401, (spec.method, spec.path, response.status_code)
        openapi_path = spec.path.replace("<agent_id>", "{agent_id}").replace("<session_id>", "{session_id}") \
            .replace("<label>", "{label}").replace("<name>", "{name}")
        assert openapi_path in document["paths"], openapi_path


async def test_stopping_the_plugin_leaves_nothing_behind(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "leaving")
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "hi"})
    assert response.status_code == 200
    await kernel.stop_plugin("runtime")
    kernel.forget_plugin("runtime")
    assert "runtime" not in kernel.services
    assert kernel.tasks.count("runtime") == 0
    assert kernel.routes.of_plugin("runtime") == []

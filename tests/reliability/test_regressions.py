"""Regression tests for bugs the reliability harness found (each names the harness test that found it)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from librefang.errors import Conflict
from librefang.idempotency import HOST, IN_PROGRESS, fingerprint, scope_key
from sqlalchemy import text

# -- test_crash_durability: an Idempotency-Key claimed by a SIGKILLed daemon answered 409
#    "still in progress" for an hour, so a client could not retry its unacknowledged spawn.


async def _plant_claim(kernel, key: str, request_hash: str, pid: int, host: str = HOST) -> None:
    async with kernel.db.begin() as conn:
        await conn.execute(
            text("INSERT INTO core_idempotency (key, body_hash, state, status, headers, body, created_at)"
                 " VALUES (:key, :hash, :state, NULL, :owner, NULL, :now)"),
            {"key": key, "hash": request_hash, "state": IN_PROGRESS, "now": time.time(),
             "owner": json.dumps({"claimed_by": {"host": host, "pid": pid}})},
        )


@pytest.fixture
async def store_kernel(make_kernel):
    return await make_kernel(load_entry_points=False)


async def test_claim_of_a_dead_process_is_retaken_at_once(store_kernel) -> None:
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    key = scope_key("local", "POST", "/api/agents", "k-dead")
    request_hash = fingerprint(b"{}", b"", "application/json")
    await _plant_claim(store_kernel, key, request_hash, dead.pid)
    assert await store_kernel.idempotency.claim(key, request_hash) is None  # retaken, the request runs


async def test_claim_of_a_live_process_or_another_host_still_conflicts(store_kernel) -> None:
    alive = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    try:
        request_hash = fingerprint(b"{}", b"", "application/json")
        for name, pid, host in [("live", alive.pid, HOST), ("remote", 999_999_999, "another-host.example")]:
            key = scope_key("local", "POST", "/api/agents", f"k-{name}")
            await _plant_claim(store_kernel, key, request_hash, pid, host)
            with pytest.raises(Conflict) as info:
                await store_kernel.idempotency.claim(key, request_hash)
            assert info.value.code == "idempotency_in_progress"
    finally:
        alive.kill()
        await alive.wait()


# -- test_fuzz_openapi: two plugins' response models named SearchResults (memory, runtime), and
#    ChatMessage, ModelList, StatusMessage: the OpenAPI document kept one schema per name, so routes
#    declared a response schema that did not describe what they return.


def _plugin_with_model(name: str, field_name: str):
    import librefang
    from librefang.routing import Router
    from pydantic import BaseModel, create_model

    model = create_model("SearchResults", __base__=BaseModel, **{field_name: (int, ...)})
    model.__module__ = f"collide_{name}.schemas"

    class Plugin:
        @librefang.hookimpl
        def register_routes(self, register):
            router = Router(name)

            @router.get(f"/api/{name}/search", cost=1, response=model)
            async def search():
                return model(**{field_name: 1})

            register(router)

    return Plugin()


async def test_same_named_models_of_two_plugins_keep_their_own_schemas(make_kernel) -> None:
    from librefang.openapi import build_openapi

    kernel = await make_kernel(load_entry_points=False, plugins={
        "alpha": _plugin_with_model("alpha", "alpha_total"), "beta": _plugin_with_model("beta", "beta_total")})
    document = build_openapi(kernel)
    schemas = document["components"]["schemas"]
    for name in ("alpha", "beta"):
        ref = document["paths"][f"/api/{name}/search"]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"]["$ref"]
        component = schemas[ref.rsplit("/", 1)[1]]
        assert list(component["properties"]) == [f"{name}_total"], (name, ref, component)


# -- test_fuzz_openapi: PATCH /api/agents/{id}/config accepted base_url "ht\x1dtp://x"; every later
#    message to the agent was a 502 (httpx InvalidURL) instead of the change being a 400.


@pytest.mark.parametrize("url", ["ht\x1dtp://x", "ftp://host/v1", "http://", "http://a b/v1", "localhost:11434"])
def test_manifest_refuses_unusable_base_url(url: str) -> None:
    from librefang_agents.manifest import FallbackModel, ModelConfig
    from pydantic import ValidationError

    for model in (ModelConfig, FallbackModel):
        with pytest.raises(ValidationError, match="base_url"):
            model(provider="openai", model="m", base_url=url)


def test_manifest_keeps_usable_base_urls() -> None:
    from librefang_agents.manifest import ModelConfig

    for url in ["http://127.0.0.1:11434", "https://user:pw@llm.example.com/v1", "HTTPS://api.example.com/v1?x=1"]:
        assert ModelConfig(provider="openai", model="m", base_url=url).base_url == url


# -- bench/soak.py: a WebSocket client that hung up while its turn ran left the handler waiting
#    forever (asyncio.wait_for swallowed Quart's cancellation on Python 3.11): the per-IP slot and
#    the tasks leaked, and after 5 such disconnects every WebSocket from that IP was refused.


async def test_websocket_disconnects_mid_turn_release_their_slot(librefang_home, monkeypatch) -> None:
    import websockets
    from librefang.testing import start_live_server, write_config

    from tests.fakes.llm_server import FakeLLMServer
    from tests.reliability.daemon import API_KEY, PROVIDER_KEY, agent_manifest, daemon_config

    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers,agents,runtime")
    fake = FakeLLMServer().start_in_thread()
    write_config(librefang_home, daemon_config(fake.url))
    server = await asyncio.to_thread(start_live_server, librefang_home)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        import httpx

        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
            created = await http.post("/api/agents", json={"manifest_toml": agent_manifest("ws-slots")})
            agent_id = created.json()["agent_id"]
        url = server.url.replace("http://", "ws://") + f"/api/agents/{agent_id}/ws"
        for _ in range(8):  # more than ws_max_connections_per_ip (5)
            async with websockets.connect(url, additional_headers=headers) as ws:
                assert json.loads(await ws.recv())["type"] == "connected"
                await ws.send(json.dumps({"type": "message", "content": "hang up now"}))
        runtime = server.kernel.services["runtime"]
        for _ in range(50):
            if not runtime.ws_connections:
                break
            await asyncio.sleep(0.1)
        assert runtime.ws_connections == {}
        async with websockets.connect(url, additional_headers=headers) as ws:  # still admitted
            assert json.loads(await ws.recv())["type"] == "connected"
    finally:
        await asyncio.to_thread(server.stop)
        fake.stop_thread()

"""KV memory over HTTP: list/get/put/delete, JSON values, key charset, size limits, export/import."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

UNKNOWN = str(uuid.uuid4())


@pytest.fixture
async def agent(env: Any, spawn: Any) -> tuple[Any, str]:
    kernel, client = env
    return client, await spawn(kernel, "kv-agent")


async def test_put_get_list_delete(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    base = f"/api/memory/agents/{agent_id}/kv"
    r = await client.put(f"{base}/color", json={"value": {"name": "blue", "rgb": [0, 0, 255]}})
    assert r.status_code == 200 and await r.get_json() == {"status": "stored", "key": "color", "version": 1}
    r = await client.put(f"{base}/count", json=42)  # a bare JSON body is the value
    assert r.status_code == 200
    r = await client.put(f"{base}/count", json={"value": 43})
    assert (await r.get_json())["version"] == 2
    r = await client.get(f"{base}/color")
    assert await r.get_json() == {"key": "color", "value": {"name": "blue", "rgb": [0, 0, 255]}}
    r = await client.get(base)
    assert await r.get_json() == {"kv_pairs": [{"key": "color", "value": {"name": "blue", "rgb": [0, 0, 255]}},
                                              {"key": "count", "value": 43}]}
    r = await client.delete(f"{base}/count")
    assert r.status_code == 200 and (await r.get_json())["status"] == "deleted"
    assert (await client.get(f"{base}/count")).status_code == 404
    assert (await client.delete(f"{base}/count")).status_code == 404


async def test_null_and_scalar_values_round_trip(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    base = f"/api/memory/agents/{agent_id}/kv"
    for key, value in [("n", None), ("s", "text"), ("b", False), ("l", [1, "2", None])]:
        assert (await client.put(f"{base}/{key}", json={"value": value})).status_code == 200
        assert (await (await client.get(f"{base}/{key}")).get_json())["value"] == value


async def test_namespaces_are_separate(env: Any, spawn: Any) -> None:
    kernel, client = env
    a, b = await spawn(kernel, "alpha"), await spawn(kernel, "beta")
    await client.put(f"/api/memory/agents/{a}/kv/secret", json={"value": "a-only"})
    assert (await client.get(f"/api/memory/agents/{b}/kv/secret")).status_code == 404
    assert (await (await client.get(f"/api/memory/agents/{b}/kv")).get_json()) == {"kv_pairs": []}


async def test_bad_keys_are_400(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    for key in ["bad key", ".hidden", "x" * 257, "ключ", "semi;colon"]:
        r = await client.put(f"/api/memory/agents/{agent_id}/kv/{key}", json={"value": 1})
        body = await r.get_json()
        assert r.status_code == 400 and body["code"] == "invalid_key" and body["request_id"], key
        r = await client.get(f"/api/memory/agents/{agent_id}/kv/{key}")
        assert r.status_code == 400, key
    r = await client.put(f"/api/memory/agents/{agent_id}/kv/a/b", json={"value": 1})
    assert r.status_code == 404  # a slash never reaches the route


async def test_bad_input(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    base = f"/api/memory/agents/{agent_id}/kv"
    r = await client.put(f"{base}/k", data="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = await client.put(f"{base}/k", json={"value": "x" * (64 * 1024 + 1)})
    assert r.status_code == 413 and (await r.get_json())["code"] == "value_too_large"
    assert (await client.get(f"{base}/missing")).status_code == 404
    assert (await client.get("/api/memory/agents/not-a-uuid/kv")).status_code == 400
    r = await client.get(f"/api/memory/agents/{UNKNOWN}/kv")
    assert r.status_code == 404 and (await r.get_json())["code"] == "agent_not_found"
    assert (await client.put(f"/api/memory/agents/{UNKNOWN}/kv/k", json={"value": 1})).status_code == 404


async def test_key_limit(start_memory: Any, spawn: Any) -> None:
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\nkv_max_keys_per_agent = 2\n")
    agent_id = await spawn(kernel, "limited")
    base = f"/api/memory/agents/{agent_id}/kv"
    assert (await client.put(f"{base}/a", json={"value": 1})).status_code == 200
    assert (await client.put(f"{base}/b", json={"value": 1})).status_code == 200
    assert (await client.put(f"{base}/a", json={"value": 2})).status_code == 200  # overwrite is fine
    r = await client.put(f"{base}/c", json={"value": 1})
    assert r.status_code == 413 and (await r.get_json())["code"] == "too_many_keys"
    r = await client.post(f"/api/agents/{agent_id}/memory/import", json={"kv": {"c": 1}})
    assert r.status_code == 413
    r = await client.post(f"/api/agents/{agent_id}/memory/import", json={"kv": {"c": 1}, "clear_existing": True})
    assert r.status_code == 200


async def test_export_import(agent: tuple[Any, str], env: Any, spawn: Any) -> None:
    client, agent_id = agent
    kernel, _ = env
    await client.put(f"/api/memory/agents/{agent_id}/kv/a", json={"value": 1})
    await client.put(f"/api/memory/agents/{agent_id}/kv/b", json={"value": {"x": [1]}})
    exported = await (await client.get(f"/api/agents/{agent_id}/memory/export")).get_json()
    assert exported == {"agent_id": agent_id, "version": 1, "kv": {"a": 1, "b": {"x": [1]}}}
    other = await spawn(kernel, "other")
    await client.put(f"/api/memory/agents/{other}/kv/keep", json={"value": True})
    r = await client.post(f"/api/agents/{other}/memory/import", json=exported)
    body = await r.get_json()
    assert r.status_code == 200 and body["status"] == "imported" and body["imported"] == 2
    assert (await (await client.get(f"/api/agents/{other}/memory/export")).get_json())["kv"] == {
        "a": 1, "b": {"x": [1]}, "keep": True}
    r = await client.post(f"/api/agents/{other}/memory/import", json={"kv": {"z": 0}, "clear_existing": True})
    assert (await r.get_json())["cleared"] is True
    assert (await (await client.get(f"/api/agents/{other}/memory/export")).get_json())["kv"] == {"z": 0}


async def test_import_is_all_or_nothing(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    await client.put(f"/api/memory/agents/{agent_id}/kv/old", json={"value": 1})
    url = f"/api/agents/{agent_id}/memory/import"
    r = await client.post(url, json={"kv": {"fine": 1, "bad key": 2}, "clear_existing": True})
    assert r.status_code == 400 and (await r.get_json())["code"] == "invalid_key"
    assert (await (await client.get(f"/api/agents/{agent_id}/memory/export")).get_json())["kv"] == {"old": 1}
    for bad in ({}, {"kv": []}, {"kv": {"a": 1}, "clear_existing": "yes"}, {"kv": {}, "extra": 1}):
        r = await client.post(url, json=bad)
        assert r.status_code == 400, bad
    assert (await client.post(f"/api/agents/{UNKNOWN}/memory/import", json={"kv": {}})).status_code == 404
    assert (await client.get(f"/api/agents/{UNKNOWN}/memory/export")).status_code == 404


async def test_routes_need_auth(start_memory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBREFANG_API_KEY", "k" * 32)
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n")
    paths = [s for s in kernel.routes.specs.values() if s.plugin == "memory"]
    assert len(paths) == 31
    for spec in paths:
        path = spec.path.replace("<agent_id>", UNKNOWN).replace("<key>", "k").replace("<memory_id>", "m") \
            .replace("<level>", "user").replace("<user_id>", "u")
        r = await client.open(path, method=spec.method)
        assert r.status_code == 401, (spec.method, spec.path)
        assert not spec.public


async def test_a_killed_agents_memory_is_gone_at_once(agent: tuple[Any, str], env: Any) -> None:
    import asyncio

    from librefang_agents.api import registry

    client, agent_id = agent
    kernel, _ = env
    assert (await client.put(f"/api/memory/agents/{agent_id}/kv/k", json={"value": 1})).status_code == 200
    await registry(kernel).kill(agent_id)
    await asyncio.sleep(0)  # the bus delivers the agent.killed event
    for _ in range(20):
        r = await client.get(f"/api/memory/agents/{agent_id}/kv/k")
        if r.status_code == 404:
            break
        await asyncio.sleep(0.01)
    assert r.status_code == 404 and (await r.get_json())["code"] == "agent_not_found"

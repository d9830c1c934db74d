"""The memory plugin on PostgreSQL (full-text search with tsvector/ts_rank, every table through the
same code): runs when ``LIBREFANG_TEST_POSTGRES_URL`` points at a server (as the core's storage
tests), skipped otherwise."""

from __future__ import annotations

from typing import Any


async def test_memory_on_postgres(start_memory: Any, spawn: Any, postgres_url: str) -> None:
    kernel, client = await start_memory('[memory]\nembeddings = "off"\n', top=f'database_url = "{postgres_url}"\n')
    assert not kernel.db.is_sqlite
    agent_id = await spawn(kernel, "pg-agent")
    await client.put(f"/api/memory/agents/{agent_id}/kv/k", json={"value": {"a": [1]}})
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/kv/k")).get_json())["value"] == {"a": [1]}
    for content in ("The user drinks green tea every morning", "The car needs new tires", "Tea with milk, never"):
        r = await client.post("/api/memory", json={"agent_id": agent_id, "content": content, "level": "user"})
        assert r.status_code == 201
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=green tea")).get_json()
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning",
                                                      "Tea with milk, never"]
    body = await (await client.get("/api/memory/search?q=tires&level=user")).get_json()
    assert body["count"] == 1
    memory_id = body["memories"][0]["id"]
    assert (await client.put(f"/api/memory/items/{memory_id}", json={"content": "The bike needs oil"})).status_code == 200
    assert (await (await client.get("/api/memory/search?q=bike")).get_json())["count"] == 1
    assert (await client.post("/api/memory/decay")).status_code == 200
    assert (await client.post("/api/memory/cleanup")).status_code == 200
    r = await client.post(f"/api/memory/agents/{agent_id}/relations",
                          json=[{"subject": "user", "relation": "drinks", "object": "tea"}])
    assert (await r.get_json())["stored"] == 1
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/relations?source=user")).get_json())["count"] == 1
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/duplicates")).get_json())["count"] == 0
    stats = await (await client.get(f"/api/memory/agents/{agent_id}/stats")).get_json()
    assert stats["user_count"] == 3
    await client.patch("/api/memory/config", json={"max_retrieve": 2})
    assert (await client.delete(f"/api/memory/agents/{agent_id}/level/user")).status_code == 200
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/count")).get_json())["count"] == 0

"""Data survives a restart: KV pairs, memories (with their search index and history), relations."""

from __future__ import annotations

from typing import Any


async def test_everything_survives_a_restart(start_memory: Any, spawn: Any) -> None:
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n")
    agent_id = await spawn(kernel, "durable")
    await client.put(f"/api/memory/agents/{agent_id}/kv/plan", json={"value": {"step": 3}})
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user collects vinyl records",
                                               "level": "user"})
    memory_id = (await r.get_json())["memories"][0]["id"]
    await client.put(f"/api/memory/items/{memory_id}", json={"content": "The user collects rare vinyl records"})
    await client.post(f"/api/memory/agents/{agent_id}/relations",
                      json=[{"subject": "user", "relation": "collects", "object": "vinyl"}])
    await kernel.stop()

    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n")
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/kv/plan")).get_json())["value"] == {"step": 3}
    found = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=rare vinyl")).get_json()
    assert [m["id"] for m in found["memories"]] == [memory_id]
    history = await (await client.get(f"/api/memory/items/{memory_id}/history")).get_json()
    assert [h["event"] for h in history["history"]] == ["ADD", "UPDATE"]
    relations = await (await client.get(f"/api/memory/agents/{agent_id}/relations")).get_json()
    assert relations["count"] == 1 and relations["relations"][0]["target"]["name"] == "vinyl"

"""Maintenance and graph over HTTP: duplicates, consolidate, cleanup, decay (the brief's formula),
relations store/query, export/import of proactive memories, the per-agent limit with eviction."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from librefang_memory.models import items

UNKNOWN = str(uuid.uuid4())
DAY = 86_400


@pytest.fixture
async def agent(env: Any, spawn: Any) -> tuple[Any, Any, str]:
    kernel, client = env
    return kernel, client, await spawn(kernel, "maint-agent")


async def add(client: Any, agent_id: str, content: str, **extra: Any) -> str:
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": content, **extra})
    assert r.status_code == 201, await r.get_json()
    return (await r.get_json())["memories"][0]["id"]


async def age(kernel: Any, memory_id: str, **columns: float) -> None:
    async with kernel.db.begin() as conn:
        await conn.execute(items.update().where(items.c.id == memory_id).values(**columns))


async def test_duplicates_and_consolidate(agent: tuple[Any, Any, str]) -> None:
    kernel, client, agent_id = agent
    old = await add(client, agent_id, "The user loves hiking in the Alps")
    await age(kernel, old, created_at=time.time() - 100)
    new = await add(client, agent_id, "the user loves hiking in the alps!")
    other = await add(client, agent_id, "The user owns a red bicycle")
    body = await (await client.get(f"/api/memory/agents/{agent_id}/duplicates")).get_json()
    assert body["count"] == 1 and [m["id"] for m in body["groups"][0]] == [new, old]
    r = await client.post(f"/api/memory/agents/{agent_id}/consolidate")
    body = await r.get_json()
    assert body["merged"] == 1 and body["remaining"] == 2
    listed = await (await client.get(f"/api/memory/agents/{agent_id}")).get_json()
    assert {m["id"] for m in listed["memories"]} == {new, other}
    assert (await client.post(f"/api/memory/agents/{UNKNOWN}/consolidate")).status_code == 404
    assert (await client.post("/api/memory/agents/bad/consolidate")).status_code == 400


async def test_cleanup_expires_session_memories_and_purges(agent: tuple[Any, Any, str]) -> None:
    kernel, client, agent_id = agent
    stale = await add(client, agent_id, "an old session note", level="session")
    await age(kernel, stale, created_at=time.time() - 25 * 3600)
    fresh = await add(client, agent_id, "a new session note", level="session")
    durable = await add(client, agent_id, "an old user fact", level="user")
    await age(kernel, durable, created_at=time.time() - 90 * DAY)
    body = await (await client.post("/api/memory/cleanup")).get_json()
    assert body["removed"] == 1 and body["purged"] == 0
    listed = await (await client.get(f"/api/memory/agents/{agent_id}")).get_json()
    assert {m["id"] for m in listed["memories"]} == {fresh, durable}
    await age(kernel, stale, deleted_at=time.time() - 31 * DAY)
    body = await (await client.post("/api/memory/cleanup")).get_json()
    assert body["purged"] == 1
    assert (await client.get(f"/api/memory/items/{stale}/history")).status_code == 404  # gone for good


async def test_decay_formula(agent: tuple[Any, Any, str]) -> None:
    kernel, client, agent_id = agent
    never = await add(client, agent_id, "never accessed", confidence=0.8)
    often = await add(client, agent_id, "accessed eight times", confidence=0.8)
    recent = await add(client, agent_id, "accessed just now", confidence=0.8)
    now = time.time()
    await age(kernel, never, accessed_at=now - 10 * DAY, access_count=0)
    await age(kernel, often, accessed_at=now - 10 * DAY, access_count=8)
    r = await client.post("/api/memory/decay")
    assert (await r.get_json())["decayed"] == 2
    async with kernel.db.begin() as conn:
        conf = dict((await conn.execute(sa.select(items.c.id, items.c.confidence))).all())
    assert conf[never] == pytest.approx(0.8 * math.exp(-0.01 * 10), rel=1e-3)
    assert conf[often] == pytest.approx(0.8 * math.exp(-(0.01 / 4) * 10), rel=1e-3)  # boost min(1+log2(8), 4) = 4
    assert conf[recent] == 0.8
    # a second run right away changes (almost) nothing: runs never compound
    await client.post("/api/memory/decay")
    async with kernel.db.begin() as conn:
        again = dict((await conn.execute(sa.select(items.c.id, items.c.confidence))).all())
    assert again[never] == pytest.approx(conf[never], rel=1e-5)


async def test_relations(agent: tuple[Any, Any, str]) -> None:
    _, client, agent_id = agent
    url = f"/api/memory/agents/{agent_id}/relations"
    triples = [{"subject": "Ada", "subject_type": "person", "relation": "works_at", "object": "Acme",
                "object_type": "company"},
               {"subject": "Ada", "subject_type": "person", "relation": "knows", "object": "Bob",
                "object_type": "person", "confidence": 0.5}]
    body = await (await client.post(url, json=triples)).get_json()
    assert body["stored"] == 2 and body["skipped"] == 0 and body["entities_created"] == 3
    body = await (await client.post(url, json={"relations": triples[:1]})).get_json()
    assert body["stored"] == 0 and body["skipped"] == 1
    found = await (await client.get(url)).get_json()
    assert found["count"] == 2
    found = await (await client.get(f"{url}?source=Ada&relation=works_at")).get_json()
    (rel,) = found["relations"]
    assert rel["source"]["name"] == "Ada" and rel["source"]["entity_type"] == "person"
    assert rel["target"] == {"id": rel["target"]["id"], "entity_type": "company", "name": "Acme", "properties": {}}
    found = await (await client.get(f"{url}?target={rel['target']['id']}")).get_json()
    assert found["count"] == 1
    assert (await (await client.get(f"{url}?target=Nobody")).get_json())["count"] == 0
    for bad in ([], {"relations": []}, [{"subject": "x"}], [{"subject": "", "relation": "r", "object": "o"}],
                "text", [{"subject": "a", "relation": "r", "object": "o", "extra": 1}]):
        assert (await client.post(url, json=bad)).status_code == 400, bad
    assert (await client.get(f"{url}?limit=0")).status_code == 400
    assert (await client.post(f"/api/memory/agents/{UNKNOWN}/relations", json=triples)).status_code == 404


async def test_export_import(agent: tuple[Any, Any, str], spawn: Any) -> None:
    kernel, client, agent_id = agent
    await add(client, agent_id, "The user is a night owl", level="user", category="work_style",
              metadata={"k": 1}, confidence=0.7)
    await add(client, agent_id, "Deploys happen on Fridays", level="agent")
    exported = await (await client.get(f"/api/memory/agents/{agent_id}/export")).get_json()
    assert exported["agent_id"] == agent_id and exported["version"] == 1 and len(exported["memories"]) == 2
    first = exported["memories"][0]
    assert first["content"] == "The user is a night owl" and first["category"] == "work_style"
    assert first["metadata"] == {"k": 1} and first["confidence"] == 0.7
    other = await spawn(kernel, "importer")
    await add(client, other, "something to clear")
    r = await client.post(f"/api/memory/agents/{other}/import", json={**exported, "clear_existing": True})
    body = await r.get_json()
    assert r.status_code == 200 and body["imported"] == 2 and body["cleared"] == 1
    again = await (await client.get(f"/api/memory/agents/{other}/export")).get_json()
    assert [(m["content"], m["created_at"], m["level"]) for m in again["memories"]] == [
        (m["content"], m["created_at"], m["level"]) for m in exported["memories"]]
    url = f"/api/memory/agents/{other}/import"
    for bad in ({}, {"memories": [{"content": "x", "level": "nope"}]}, {"memories": [{"content": ""}]},
                {"memories": [{"content": "x", "created_at": "yesterday"}]}, {"memories": "x"}):
        r = await client.post(url, json=bad)
        assert r.status_code == 400, (bad, await r.get_json())
    too_many = {"memories": [{"content": f"m{n}"} for n in range(1001)], "clear_existing": True}
    r = await client.post(url, json=too_many)
    assert r.status_code == 413 and (await r.get_json())["code"] == "too_many_items"
    assert (await (await client.get(f"/api/memory/agents/{other}/count")).get_json())["count"] == 2  # unchanged


async def test_limit_evicts_lowest_confidence_then_oldest(start_memory: Any, spawn: Any) -> None:
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n[proactive_memory]\nmax_memories_per_agent = 3\n")
    agent_id = await spawn(kernel, "small")
    weak = await add(client, agent_id, "weak fact", confidence=0.2)
    oldest = await add(client, agent_id, "oldest strong fact", confidence=0.9)
    await add(client, agent_id, "newer strong fact", confidence=0.9)
    await add(client, agent_id, "newest strong fact", confidence=0.9)
    ids = {m["id"] for m in (await (await client.get(f"/api/memory/agents/{agent_id}")).get_json())["memories"]}
    assert weak not in ids and oldest in ids and len(ids) == 3
    await add(client, agent_id, "one more", confidence=0.9)
    ids = {m["id"] for m in (await (await client.get(f"/api/memory/agents/{agent_id}")).get_json())["memories"]}
    assert oldest not in ids and len(ids) == 3


async def test_destructive_operations_are_audited(agent: tuple[Any, Any, str]) -> None:
    _, client, agent_id = agent
    memory_id = await add(client, agent_id, "to be deleted")
    await add(client, agent_id, "to be cleared")
    await client.delete(f"/api/memory/items/{memory_id}")
    await client.delete(f"/api/memory/agents/{agent_id}")
    await client.patch("/api/memory/config", json={"max_retrieve": 3})
    await client.post(f"/api/agents/{agent_id}/memory/import", json={"kv": {"a": 1}, "clear_existing": True})
    body = await (await client.get("/api/audit/recent?n=20")).get_json()
    actions = {(e["action"], e["target"]) for e in body["items"]}
    assert {("MemoryDelete", memory_id), ("MemoryClear", agent_id), ("MemoryConfigChange", "proactive_memory"),
            ("MemoryKvImport", agent_id)} <= actions


async def test_background_maintenance_decays(start_memory: Any, spawn: Any) -> None:
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n"
                                        "[proactive_memory]\nmaintenance_interval_hours = 0.0001\n")
    agent_id = await spawn(kernel, "maintained")
    memory_id = await add(client, agent_id, "an old fact", confidence=0.9)
    await age(kernel, memory_id, accessed_at=time.time() - 30 * DAY)
    for _ in range(50):  # a round every 0.36 s
        item = await kernel.services["memory"].store.get(memory_id)
        if item.confidence < 0.9:
            break
        await asyncio.sleep(0.1)
    assert item.confidence == pytest.approx(0.9 * math.exp(-0.01 * 30), rel=1e-2)

"""Proactive memory over HTTP: add (text and messages), list/filter/page, search (global, per agent),
update with history, delete, bulk delete, clear by level, count, stats, user view, config."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

UNKNOWN = str(uuid.uuid4())


@pytest.fixture
async def agent(env: Any, spawn: Any) -> tuple[Any, str]:
    kernel, client = env
    return client, await spawn(kernel, "mem-agent")


async def add(client: Any, agent_id: str, content: str, **extra: Any) -> dict[str, Any]:
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": content, **extra})
    body = await r.get_json()
    assert r.status_code == 201, body
    return body["memories"][0]


async def test_add_list_filter_page(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    first = await add(client, agent_id, "The user's favorite color is blue", level="user", category="preference",
                      metadata={"from": "test"}, confidence=0.9)
    assert first["level"] == "user" and first["category"] == "preference" and first["metadata"] == {"from": "test"}
    assert first["confidence"] == 0.9 and first["agent_id"] == agent_id and first["access_count"] == 0
    assert first["created_at"].endswith("Z")
    for n in range(5):
        await add(client, agent_id, f"Session note number {n}")
    body = await (await client.get("/api/memory?limit=3")).get_json()
    assert body["total"] == 6 and len(body["memories"]) == 3 and body["proactive_enabled"] is True
    assert body["memories"][0]["content"] == "Session note number 4"  # newest first
    body = await (await client.get("/api/memory?limit=3&offset=3")).get_json()
    assert [m["content"] for m in body["memories"]] == ["Session note number 1", "Session note number 0",
                                                       "The user's favorite color is blue"]
    body = await (await client.get("/api/memory?level=user")).get_json()
    assert body["total"] == 1 and body["memories"][0]["id"] == first["id"]
    body = await (await client.get("/api/memory?category=preference")).get_json()
    assert body["total"] == 1
    body = await (await client.get(f"/api/memory/agents/{agent_id}?level=session")).get_json()
    assert body["total"] == 5
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/count")).get_json())["count"] == 6
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/count?level=user")).get_json())["count"] == 1


async def test_bad_input_is_400(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    for url in ("/api/memory?level=global", f"/api/memory/agents/{agent_id}?level=x",
                "/api/memory/search?q=x&level=nope", f"/api/memory/agents/{agent_id}/count?level=team",
                "/api/memory?limit=101", "/api/memory?offset=-1", "/api/memory/search", "/api/memory/search?q=",
                "/api/memory/search?q=x&limit=0", "/api/memory?unknown=1", "/api/memory/agents/xyz"):
        r = await client.get(url)
        body = await r.get_json()
        assert r.status_code == 400, (url, body)
        assert body["error"] and body["code"] and body["request_id"]
    r = await client.get("/api/memory?level=global")
    assert (await r.get_json())["code"] == "invalid_level"
    r = await client.delete(f"/api/memory/agents/{agent_id}/level/everything")
    assert r.status_code == 400 and (await r.get_json())["code"] == "invalid_level"
    for body in ({}, {"content": "x", "messages": []}, {"content": ""}, {"content": 5},
                 {"content": "x", "level": "global", "agent_id": agent_id}, {"content": "x", "confidence": 2},
                 {"content": "x", "metadata": []}, {"content": "x", "agent_id": "nope"}, {"messages": "hi"}):
        r = await client.post("/api/memory", json=body)
        assert r.status_code == 400, body
    r = await client.post("/api/memory", json={"content": "x" * 4001, "agent_id": agent_id})
    assert r.status_code == 413 and (await r.get_json())["code"] == "content_too_large"
    r = await client.post("/api/memory", json={"content": "x", "metadata": {"k": "v" * 20000}, "agent_id": agent_id})
    assert r.status_code == 413 and (await r.get_json())["code"] == "metadata_too_large"
    r = await client.post("/api/memory", json={"content": "x", "agent_id": UNKNOWN})
    assert r.status_code == 404
    for url in (f"/api/memory/agents/{UNKNOWN}", f"/api/memory/agents/{UNKNOWN}/stats",
                f"/api/memory/agents/{UNKNOWN}/count", f"/api/memory/agents/{UNKNOWN}/search?q=x",
                f"/api/memory/agents/{UNKNOWN}/duplicates", f"/api/memory/agents/{UNKNOWN}/export",
                f"/api/memory/agents/{UNKNOWN}/relations"):
        assert (await client.get(url)).status_code == 404, url


async def test_search_global_and_per_agent(env: Any, spawn: Any) -> None:
    kernel, client = env
    a, b = await spawn(kernel, "searcher-a"), await spawn(kernel, "searcher-b")
    await add(client, a, "The user drinks green tea every morning", level="user")
    await add(client, a, "The deployment uses Kubernetes on bare metal", level="agent")
    await add(client, b, "The user prefers black tea with milk", level="user")
    body = await (await client.get("/api/memory/search?q=tea")).get_json()
    assert body["mode"] == "fts" and body["count"] == 2
    assert {m["agent_id"] for m in body["memories"]} == {a, b}
    assert all(m["score"] > 0 for m in body["memories"])
    body = await (await client.get(f"/api/memory/agents/{a}/search?q=tea")).get_json()
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning"]
    body = await (await client.get(f"/api/memory/agents/{a}/search?q=what about tea&level=agent")).get_json()
    assert body["count"] == 0
    body = await (await client.get("/api/memory/search?q=green tea morning")).get_json()
    assert body["memories"][0]["content"] == "The user drinks green tea every morning"  # BM25: most terms first
    body = await (await client.get("/api/memory/search?q=\"tea* OR NEAR(x) AND")).get_json()  # FTS syntax is quoted
    assert body["count"] == 2
    # a search counts as an access (written in the background, within a second)
    assert await kernel.services["memory"].access.flush() == 2
    listed = await (await client.get(f"/api/memory/agents/{a}?level=user")).get_json()
    assert listed["memories"][0]["access_count"] == 4


async def test_update_history_delete(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    item = await add(client, agent_id, "The user lives in Paris", category="personal_detail")
    url = f"/api/memory/items/{item['id']}"
    r = await client.put(url, json={"content": "The user lives in Lyon", "metadata": {"moved": True}})
    body = await r.get_json()
    assert r.status_code == 200 and body["content"] == "The user lives in Lyon" and body["metadata"] == {"moved": True}
    for bad in ({}, {"level": "x"}, {"content": ""}, {"confidence": -1}, {"nope": 1}):
        assert (await client.put(url, json=bad)).status_code == 400, bad
    assert (await client.put(f"/api/memory/items/{UNKNOWN}", json={"content": "x"})).status_code == 404
    hits = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=Lyon")).get_json()
    assert hits["count"] == 1  # the FTS index follows the update
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/search?q=Paris")).get_json())["count"] == 0
    assert (await client.delete(url)).status_code == 200
    assert (await client.delete(url)).status_code == 404
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/search?q=Lyon")).get_json())["count"] == 0
    history = await (await client.get(f"{url}/history")).get_json()
    assert [h["event"] for h in history["history"]] == ["ADD", "UPDATE", "DELETE"]
    assert history["history"][0]["new_content"] == "The user lives in Paris"  # the ADD keeps the first text
    assert history["history"][1]["old_content"] == "The user lives in Paris"
    assert history["history"][1]["new_content"] == "The user lives in Lyon"
    assert (await client.get(f"/api/memory/items/{UNKNOWN}/history")).status_code == 404


async def test_bulk_delete_clear_level_reset(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    ids = [(await add(client, agent_id, f"fact {n}", level=level))["id"]
           for n, level in enumerate(["user", "user", "session", "agent", "agent"])]
    r = await client.post("/api/memory/bulk-delete", json={"ids": [ids[0], UNKNOWN]})
    assert await r.get_json() == {"deleted": 1, "not_found": [UNKNOWN]}
    for bad in ({}, {"ids": "x"}, {"ids": [1]}):
        assert (await client.post("/api/memory/bulk-delete", json=bad)).status_code == 400
    r = await client.delete(f"/api/memory/agents/{agent_id}/level/agent")
    assert (await r.get_json())["deleted"] == 2
    counts = await (await client.get(f"/api/memory/agents/{agent_id}/stats")).get_json()
    assert counts["total"] == 2 and counts["user_count"] == 1 and counts["session_count"] == 1
    assert counts["agent_count"] == 0
    r = await client.delete(f"/api/memory/agents/{agent_id}")
    assert (await r.get_json())["deleted"] == 2
    assert (await (await client.get("/api/memory/stats")).get_json())["total"] == 0


async def test_add_from_messages_extracts(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    r = await client.post("/api/memory", json={"agent_id": agent_id, "messages": [
        {"role": "user", "content": "Hi! My name is Ada. I live in London. My favorite language is Rust."},
        {"role": "assistant", "content": "My name is Bot and I like ignoring this."}]})
    body = await r.get_json()
    assert r.status_code == 201 and body["added"] == 3, body
    contents = sorted(m["content"] for m in body["memories"])
    assert contents == ["The user lives in London", "The user's favorite language is Rust", "The user's name is Ada"]
    assert {m["level"] for m in body["memories"]} == {"user"}
    r = await client.post("/api/memory", json={"agent_id": agent_id, "messages": [
        {"role": "user", "content": "My favorite language is Python."}]})
    body = await r.get_json()
    assert body["updated"] == 1 and body["added"] == 0
    assert body["memories"][0]["content"] == "The user's favorite language is Python"
    r = await client.post("/api/memory", json={"agent_id": agent_id, "messages": [
        {"role": "user", "content": "my name is Ada"}]})
    assert (await r.get_json())["unchanged"] == 1
    stats = await (await client.get(f"/api/memory/agents/{agent_id}/stats")).get_json()
    assert stats["total"] == 3 and stats["categories"] == {"personal_detail": 2, "preference": 1}


async def test_by_user(agent: tuple[Any, str]) -> None:
    client, agent_id = agent
    await add(client, agent_id, "from telegram", peer_id="tg:42")
    await add(client, agent_id, "from discord", peer_id="dc:7")
    body = await (await client.get("/api/memory/user/tg:42")).get_json()
    assert [m["content"] for m in body["memories"]] == ["from telegram"]
    body = await (await client.get(f"/api/memory/user/{agent_id}")).get_json()
    assert body["total"] == 2
    assert (await client.get("/api/memory/user/" + "u" * 300)).status_code == 400
    assert (await client.get("/api/memory/user/x?level=bad")).status_code == 400


async def test_config_get_patch_persists(start_memory: Any, librefang_home: Any) -> None:
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n[proactive_memory]\nmax_retrieve = 4\n")
    body = await (await client.get("/api/memory/config")).get_json()
    assert body["max_retrieve"] == 4 and body["auto_memorize"] is True
    r = await client.patch("/api/memory/config", json={"auto_memorize": False, "max_retrieve": 7})
    assert r.status_code == 200 and (await r.get_json())["max_retrieve"] == 7
    for bad in ({}, {"max_retrieve": 1000}, {"unknown_key": 1}, {"enabled": "maybe"}, {"max_retrieve": None}):
        r = await client.patch("/api/memory/config", json=bad)
        assert r.status_code == 400, bad
    stats = await (await client.get("/api/memory/stats")).get_json()
    assert stats["auto_memorize_enabled"] is False
    await kernel.stop()
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n[proactive_memory]\nmax_retrieve = 4\n")
    body = await (await client.get("/api/memory/config")).get_json()
    assert body["max_retrieve"] == 7 and body["auto_memorize"] is False

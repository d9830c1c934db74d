"""Recall skips its search for an agent known to have no memories: the knowledge is dropped or
updated by every write path (add, import, tools' batch insert, delete, clear, bulk delete, purge), a
lookup that overlapped an insert never records "empty", module agents get no recall, and PostgreSQL
(several daemons) keeps no such knowledge."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from librefang_memory import presence as presence_module
from librefang_memory.presence import AgentPresence
from librefang_memory.store import new_row

from .conftest import AGENT


def memory_of(kernel: Any) -> Any:
    return kernel.services["memory"]


async def recall(kernel: Any, agent_id: str, text: str = "which tea do I drink?") -> str | None:
    return await memory_of(kernel).pipeline.recall(agent_id, text)


async def write_behind_the_stores_back(kernel: Any, agent_id: str, content: str) -> None:
    """A row the memory service did not write (as another daemon would): only the database knows it."""
    row = new_row(agent_id=agent_id, content=content, level="user", category=None, metadata={}, source="api",
                  confidence=1.0, peer_id=None)
    async with kernel.db.begin() as conn:
        await conn.execute(sa.text(f"INSERT INTO memory_items ({', '.join(row)}) VALUES "
                                   f"({', '.join(':' + c for c in row)})"), row)


async def test_an_agent_without_memories_is_known_empty_until_a_memory_is_added(env: Any, spawn: Any) -> None:
    kernel, client = env
    agent_id = await spawn(kernel, "empty-one")
    store = memory_of(kernel).store
    assert store.presence.known(agent_id) is None
    assert await recall(kernel, agent_id) is None
    assert store.presence.known(agent_id) is False
    # The cached answer is what recall trusts: a row only the database knows is not searched for...
    await write_behind_the_stores_back(kernel, agent_id, "The user drinks green tea")
    assert await recall(kernel, agent_id) is None
    # ...while a write through the service is seen at once.
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user drinks oolong tea"})
    assert r.status_code == 201
    assert store.presence.known(agent_id) is True
    context = await recall(kernel, agent_id)
    assert context is not None and "oolong tea" in context and "green tea" in context


async def test_every_write_path_updates_the_knowledge(env: Any, spawn: Any) -> None:
    kernel, client = env
    memory = memory_of(kernel)
    store = memory.store
    agent_id = await spawn(kernel, "writer")

    async def known_empty() -> None:
        assert await recall(kernel, agent_id) is None
        assert store.presence.known(agent_id) is False

    await known_empty()
    # import
    r = await client.post(f"/api/memory/agents/{agent_id}/import",
                          json={"memories": [{"content": "The user drinks black tea", "level": "user"}]})
    assert r.status_code in (200, 201), await r.get_json()
    assert "black tea" in (await recall(kernel, agent_id) or "")
    # clearing the agent forgets it: asked again, and empty again
    assert (await client.delete(f"/api/memory/agents/{agent_id}")).status_code == 200
    assert store.presence.known(agent_id) is None
    await known_empty()
    # the batch insert (no read-back)
    await memory.insert_batch([new_row(agent_id=agent_id, content="The user drinks mint tea", level="user",
                                       category=None, metadata={}, source="api", confidence=1.0, peer_id=None)])
    assert "mint tea" in (await recall(kernel, agent_id) or "")
    # deleting one item, then bulk delete, then a level clear
    listed = await (await client.get(f"/api/memory/agents/{agent_id}")).get_json()
    assert (await client.delete(f"/api/memory/items/{listed['memories'][0]['id']}")).status_code == 200
    await known_empty()
    added = await memory.add_many(agent_id, [{"content": "The user drinks chai tea", "level": "user"},
                                             {"content": "The user likes tea cakes", "level": "session"}])
    assert "chai tea" in (await recall(kernel, agent_id) or "")
    await client.post("/api/memory/bulk-delete", json={"ids": [added[0].id]})
    assert store.presence.known(agent_id) is None
    assert "tea cakes" in (await recall(kernel, agent_id) or "")  # one left: still searched
    assert (await client.delete(f"/api/memory/agents/{agent_id}/level/session")).status_code == 200
    await known_empty()
    # a purge (cleanup of long-deleted rows) forgets its agents too
    await memory.add_many(agent_id, [{"content": "The user drinks rooibos tea", "level": "user"}])
    assert store.presence.known(agent_id) is True
    await store.purge(sa.text("1 = 1"))
    assert store.presence.known(agent_id) is None
    await known_empty()


async def test_the_extraction_after_a_turn_sees_its_own_additions(env: Any, spawn: Any) -> None:
    kernel, _ = env
    pipeline = memory_of(kernel).pipeline
    agent_id = await spawn(kernel, "extractor")
    assert await recall(kernel, agent_id, "what is my name") is None  # known empty now
    turn = {"agent_id": agent_id, "message": "My name is Ada.", "outcome": "ok"}
    assert [d.action for d in await pipeline.after_turn(turn)] == ["add"]
    assert [d.action for d in await pipeline.after_turn(turn)] == ["noop"]  # found as a duplicate
    assert "Ada" in (await recall(kernel, agent_id, "what is my name") or "")


async def test_an_empty_answer_expires(env: Any, spawn: Any, monkeypatch: Any) -> None:
    kernel, _ = env
    agent_id = await spawn(kernel, "expiring")
    assert await recall(kernel, agent_id) is None
    await write_behind_the_stores_back(kernel, agent_id, "The user drinks green tea")
    assert await recall(kernel, agent_id) is None
    monkeypatch.setattr(presence_module, "EMPTY_TTL", 0.0)
    await asyncio.sleep(0.01)
    assert "green tea" in (await recall(kernel, agent_id) or "")


def test_a_lookup_that_overlapped_an_insert_does_not_record_empty() -> None:
    presence = AgentPresence(enabled=True)
    before = presence.generation
    presence.inserted(["other-agent"])  # committed while the lookup ran
    presence.learned("agent", False, before)
    assert presence.known("agent") is None
    presence.learned("agent", False, presence.generation)
    assert presence.known("agent") is False
    presence.inserted(["agent"])
    assert presence.known("agent") is True
    presence.removed(["agent"])
    assert presence.known("agent") is None
    disabled = AgentPresence(enabled=False)
    disabled.learned("agent", False, disabled.generation)
    disabled.inserted(["agent"])
    assert disabled.known("agent") is None


async def test_module_agents_get_no_recall_and_a_manifest_change_is_seen(env: Any, spawn: Any) -> None:
    kernel, client = env
    chat = await spawn(kernel, "chatty")
    module = await spawn(kernel, "moduled", 'module = "wasm:echo.wat"\n' + AGENT.format(name="moduled"))
    for agent_id in (chat, module):
        await memory_of(kernel).add_many(agent_id, [{"content": "The user drinks green tea", "level": "user"}])
    assert "green tea" in (await recall(kernel, chat) or "")
    assert await recall(kernel, module) is None
    # The agent becomes an LLM agent: its next turn recalls (the agent.* event drops the cached manifest).
    r = await client.put(f"/api/agents/{module}/update", json={"manifest_toml": AGENT.format(name="moduled")})
    assert r.status_code == 200, await r.get_json()
    assert "green tea" in (await recall(kernel, module) or "")


async def test_postgres_keeps_no_knowledge(start_memory: Any, spawn: Any, postgres_url: str) -> None:
    kernel, client = await start_memory('[memory]\nembeddings = "off"\n', top=f'database_url = "{postgres_url}"\n')
    agent_id = await spawn(kernel, "pg-presence")
    store = memory_of(kernel).store
    assert not store.presence.enabled
    assert await store.may_have_items(agent_id) is True
    assert await recall(kernel, agent_id) is None
    # another daemon's row is found on the next turn
    await write_behind_the_stores_back(kernel, agent_id, "The user drinks green tea")
    assert "green tea" in (await recall(kernel, agent_id) or "")

"""The search engine under the routes: common-word pruning, background access bookkeeping, and the
query sanitiser (FTS syntax in a query is only ever text)."""

from __future__ import annotations

import asyncio
from typing import Any

from librefang_memory.api import memory, new_row
from librefang_memory.store import query_terms


def test_query_terms() -> None:
    assert query_terms("What is MY favorite colour?") == ["favorite", "colour"]
    assert query_terms('"tea*" OR NEAR(x, y) AND col:1') == ["tea", "near", "col"]
    assert query_terms("the a of") == []
    assert len(query_terms(" ".join(f"w{n}" for n in range(50)))) == 16


async def test_near_universal_words_do_not_drive_the_ranking(env: Any, spawn: Any) -> None:
    kernel, client = env
    agent_id = await spawn(kernel, "common")
    service = memory(kernel)
    rows = [new_row(agent_id=agent_id, content=f"The user note {n} about nothing", level="user", category=None,
                    metadata={}, source="test", confidence=1.0, peer_id=None) for n in range(700)]
    rows.append(new_row(agent_id=agent_id, content="The user keeps a zebra called Stripes", level="user",
                        category=None, metadata={}, source="test", confidence=1.0, peer_id=None))
    assert await service.insert_batch(rows) == 701
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=user zebra&limit=5")).get_json()
    # "user" is in every memory: only "zebra" ranks, so nothing else comes back
    assert [m["content"] for m in body["memories"]] == ["The user keeps a zebra called Stripes"]
    body = await (await client.get("/api/memory/search?q=user&limit=5")).get_json()
    assert body["count"] == 5  # a query of only common words still answers


async def test_accesses_are_written_in_the_background(env: Any, spawn: Any) -> None:
    kernel, client = env
    agent_id = await spawn(kernel, "accessed")
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user plays chess"})
    memory_id = (await r.get_json())["memories"][0]["id"]
    await client.get(f"/api/memory/agents/{agent_id}/search?q=chess")
    for _ in range(40):  # flushed within about a second, with no help
        item = await memory(kernel).store.get(memory_id)
        if item is not None and item.access_count == 1:
            break
        await asyncio.sleep(0.1)
    assert item is not None and item.access_count == 1 and item.accessed_at > item.created_at

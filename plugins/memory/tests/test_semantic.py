"""Semantic search with the optional ``embeddings`` extra (wordllama offline, sqlite-vec index):
hybrid ranking by reciprocal-rank fusion finds memories that share no word with the query, through
the sqlite-vec index and through the in-process ranking. Skipped when the extra is not installed,
except in CI (``CI=true``), where the development install must have it."""

from __future__ import annotations

import os
from typing import Any

import pytest
from librefang_memory.embeddings import reciprocal_rank_fusion

SEMANTIC = "[memory]\nembeddings = \"wordllama\"\n"


def need(*modules: str) -> None:
    """Skip without the extra; in CI a missing extra is a failure, never a silent skip."""
    for module in modules:
        if os.environ.get("CI"):
            __import__(module)
        else:
            pytest.importorskip(module)


def test_vector_cache_is_bounded() -> None:
    from librefang_memory.embeddings import VectorCache

    cache = VectorCache(max_items=3)
    cache.put("a", [(1, b"x"), (2, b"y")])
    cache.put("b", [(3, b"z")])
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", [(4, b"w")])  # 4 vectors > 3: b (least recent) goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("big", [(n, b"v") for n in range(4)])  # larger than the whole cache: not kept
    assert cache.get("big") is None
    cache.drop("a")
    assert cache.get("a") is None


def test_reciprocal_rank_fusion() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert [key for key, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


@pytest.mark.parametrize("index", [True, False], ids=["sqlite-vec", "in-process"])
async def test_hybrid_search_finds_meaning_without_shared_words(start_memory: Any, spawn: Any, index: bool) -> None:
    need("wordllama", "sqlite_vec", "apsw")
    kernel, client = await start_memory(SEMANTIC + f"vector_index = {str(index).lower()}\n")
    semantic = kernel.services["memory"].semantic
    agent_id = await spawn(kernel, "semantic")
    for content in ("The user drinks green tea every morning", "The car needs new winter tires",
                    "The quarterly report is due on Friday"):
        r = await client.post("/api/memory", json={"agent_id": agent_id, "content": content})
        assert r.status_code == 201
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=hot beverages&limit=1")).get_json()
    assert body["mode"] == "hybrid"
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning"]
    body = await (await client.get("/api/memory/search?q=automobile maintenance&limit=1")).get_json()
    assert [m["content"] for m in body["memories"]] == ["The car needs new winter tires"]
    stats = await (await client.get("/api/memory/stats")).get_json()
    assert stats["semantic_search"] is True
    assert stats["vector_backend"] == ("sqlite-vec" if index else "in-process")
    if index:
        assert semantic.index.summary()[0] == 3
    # an updated memory is re-embedded; a deleted one is no longer found
    memory_id = body["memories"][0]["id"]
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=musical instrument&limit=1")).get_json()
    assert memory_id not in [m["id"] for m in body["memories"]]  # (the agent's vectors are now cached)
    assert (semantic.cache.get(agent_id) is not None) is (not index)  # the cache serves the in-process path
    await client.put(f"/api/memory/items/{memory_id}", json={"content": "The user plays the violin"})
    body = await (await client.get("/api/memory/search?q=musical instrument&limit=1")).get_json()
    assert body["memories"][0]["id"] == memory_id
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=musical instrument&limit=1")).get_json()
    assert body["memories"][0]["id"] == memory_id  # the cache followed the update
    await client.delete(f"/api/memory/items/{memory_id}")
    body = await (await client.get("/api/memory/search?q=musical instrument&limit=3")).get_json()
    assert memory_id not in [m["id"] for m in body["memories"]]


async def test_embeddings_off_is_fts_only(start_memory: Any, spawn: Any) -> None:
    kernel, client = await start_memory("[memory]\nembeddings = \"off\"\n")
    agent_id = await spawn(kernel, "plain")
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user drinks green tea"})
    body = await (await client.get("/api/memory/search?q=hot beverages")).get_json()
    assert body["mode"] == "fts" and body["count"] == 0


async def test_vector_index_heals_after_a_restart(start_memory: Any, spawn: Any) -> None:
    """The index is derived from ``memory_vectors``: lost or stale, it is rebuilt at startup."""
    need("wordllama", "sqlite_vec", "apsw")
    kernel, client = await start_memory(SEMANTIC)
    agent_id = await spawn(kernel, "healing")
    for content in ("The user drinks green tea every morning", "The car needs new winter tires"):
        await client.post("/api/memory", json={"agent_id": agent_id, "content": content})
    path = kernel.services["memory"].semantic.index.path
    await kernel.stop()
    path.unlink()  # lost (WAL files too, if any)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        extra.unlink(missing_ok=True)

    kernel, client = await start_memory(SEMANTIC)
    index = kernel.services["memory"].semantic.index
    assert index is not None and index.summary()[0] == 2
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=hot beverages&limit=1")).get_json()
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning"]
    item = await kernel.services["memory"].store.get(body["memories"][0]["id"])
    index.remove([item.seq])
    assert index.summary()[0] == 1
    await kernel.stop()

    kernel, client = await start_memory(SEMANTIC)  # stale (a row missing): rebuilt from the database
    assert kernel.services["memory"].semantic.index.summary()[0] == 2


async def test_an_unusable_vector_index_falls_back_to_in_process_ranking(start_memory: Any, spawn: Any) -> None:
    need("wordllama", "sqlite_vec", "apsw")
    kernel, client = await start_memory(SEMANTIC)
    path = kernel.services["memory"].semantic.index.path
    await kernel.stop()
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    path.mkdir()  # the index file cannot be opened

    kernel, client = await start_memory(SEMANTIC)
    assert kernel.services["memory"].semantic.index is None
    agent_id = await spawn(kernel, "fallback")
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user drinks green tea every morning"})
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The car needs new winter tires"})
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=hot beverages&limit=1")).get_json()
    assert body["mode"] == "hybrid"
    assert [m["content"] for m in body["memories"]] == ["The user drinks green tea every morning"]
    stats = await (await client.get("/api/memory/stats")).get_json()
    assert stats["vector_backend"] == "in-process"

"""``[memory] embeddings = "provider"``: vectors from the provider's embeddings API, end to end over
HTTP against the fake provider (its deterministic bag-of-words vectors), stored in the sqlite-vec
index; a provider failure never fails a write."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import llm_embeddings
from tests.fakes.llm_server import Script

from .test_semantic import need

PROVIDER = '[memory]\nembeddings = "provider"\nembedding_provider = "openai"\nembedding_model = "fake-embed"\n'


def embedding_calls(fake_llm: Any) -> list[Any]:
    return [r for r in fake_llm.requests if r.format == "embeddings"]


@pytest.mark.parametrize("index", [True, False], ids=["sqlite-vec", "in-process"])
async def test_memories_are_embedded_by_the_provider(start_memory: Any, spawn: Any, fake_llm: Any,
                                                     index: bool) -> None:
    if index:
        need("sqlite_vec", "apsw")
    kernel, client = await start_memory(PROVIDER + f"vector_index = {str(index).lower()}\n")
    semantic = kernel.services["memory"].semantic
    assert semantic.embedder.name == "openai:fake-embed"
    agent_id = await spawn(kernel, "embedded")
    contents = ["The user drinks green tea every morning", "The car needs new winter tires"]
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": contents[0]})
    assert r.status_code == 201
    await client.post("/api/memory", json={"agent_id": agent_id, "content": contents[1]})
    calls = embedding_calls(fake_llm)
    assert [c.body["input"] for c in calls] == [[contents[0]], [contents[1]]]
    assert calls[0].body["model"] == "fake-embed" and calls[0].path == "/v1/embeddings"

    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=tea for breakfast&limit=2")).get_json()
    assert body["mode"] == "hybrid"
    assert body["memories"][0]["content"] == contents[0]
    assert embedding_calls(fake_llm)[-1].body["input"] == ["tea for breakfast"]
    ranked = await semantic.search("green tea morning", agent_id, 2)
    by_seq = {i.seq: i.content for i in (await kernel.services["memory"].store.by_seq([s for s, _ in ranked])).values()}
    assert by_seq[ranked[0][0]] == contents[0]
    expected = llm_embeddings.vector("green tea morning")
    stored = llm_embeddings.vector(contents[0])
    assert ranked[0][1] == pytest.approx(sum(a * b for a, b in zip(expected, stored, strict=True)), abs=1e-5)
    stats = await (await client.get("/api/memory/stats")).get_json()
    assert stats["vector_backend"] == ("sqlite-vec" if index else "in-process")
    if index:
        assert semantic.index.model == "openai:fake-embed" and semantic.index.dimensions == 64


async def test_a_failing_provider_never_fails_a_write(start_memory: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_memory(PROVIDER + "vector_index = false\n")
    agent_id = await spawn(kernel, "offline")
    fake_llm.script(Script(only="embeddings", fault="auth"))
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user lives in Lisbon"})
    assert r.status_code == 201
    assert kernel.services["memory"].semantic.has_vectors is False  # nothing embedded: queries are not
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user likes jazz"})
    fake_llm.script(Script(only="embeddings", fault="auth"))  # the query's embedding fails: full-text results
    body = await (await client.get(f"/api/memory/agents/{agent_id}/search?q=Lisbon")).get_json()
    assert body["mode"] == "fts" and [m["content"] for m in body["memories"]] == ["The user lives in Lisbon"]
    assert embedding_calls(fake_llm)[-1].body["input"] == ["Lisbon"]


def test_provider_embeddings_config_is_validated() -> None:
    from librefang_memory.config import MemoryConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        MemoryConfig.model_validate({"embeddings": "provider", "embedding_provider": "Bad Name!"})
    with pytest.raises(ValidationError):
        MemoryConfig.model_validate({"embeddings": "remote"})

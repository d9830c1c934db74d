"""One query embedding per turn: recall (before the turn) and the LLM extraction's candidate search
(after it) search the same text, and the second search reuses the first one's vector; another text,
another model or an expired entry is embedded again."""

from __future__ import annotations

import json
from typing import Any

from librefang_memory import semantic as semantic_module

from tests.fakes.llm_server import Script

from .test_provider_embeddings import PROVIDER, embedding_calls
from .test_runtime_integration import say, system_prompt

CONFIG = (PROVIDER + "vector_index = false\n"
          '[proactive_memory]\nextraction_model = "fake-extractor"\nextraction_provider = "openai"\n')


def embedded(fake_llm: Any, text: str) -> int:
    return sum(1 for call in embedding_calls(fake_llm) if call.body["input"] == [text])


async def test_recall_and_extraction_share_the_query_embedding(start_memory: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_memory(CONFIG)
    agent_id = await spawn(kernel, "sharer")
    r = await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user drinks green tea"})
    assert r.status_code == 201
    message = "Which tea do I drink in the morning?"
    fake_llm.script(Script(text="Green tea."), Script(text=json.dumps({"memories": []})))
    await say(client, agent_id, message)
    chats = [r for r in fake_llm.requests if r.format != "embeddings"]
    assert "green tea" in system_prompt(chats[0])  # recalled
    extraction = chats[1]
    assert extraction.body["model"] == "fake-extractor"
    assert "The user drinks green tea" in extraction.body["messages"][1]["content"]  # its candidates were searched
    assert embedded(fake_llm, message) == 1


async def test_another_text_or_an_expired_entry_is_embedded_again(start_memory: Any, spawn: Any, fake_llm: Any,
                                                                   monkeypatch: Any) -> None:
    kernel, client = await start_memory(PROVIDER + "vector_index = false\n")
    semantic = kernel.services["memory"].semantic
    agent_id = await spawn(kernel, "searcher")
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user drinks green tea"})
    for _ in range(2):
        assert await semantic.search("green tea", agent_id, 5)
    assert embedded(fake_llm, "green tea") == 1
    assert await semantic.search("tea", agent_id, 5)
    assert embedded(fake_llm, "tea") == 1
    monkeypatch.setattr(semantic_module, "QUERY_CACHE_TTL", -1.0)
    assert await semantic.search("green tea", agent_id, 5)
    assert embedded(fake_llm, "green tea") == 2
    # a new embedder (reopened: another model) never gets the old model's vectors
    monkeypatch.setattr(semantic_module, "QUERY_CACHE_TTL", 300.0)
    assert await semantic.search("green tea", agent_id, 5)
    assert embedded(fake_llm, "green tea") == 2
    await semantic.open()
    assert await semantic.search("green tea", agent_id, 5)
    assert embedded(fake_llm, "green tea") == 3

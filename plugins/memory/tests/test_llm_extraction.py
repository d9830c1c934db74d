"""LLM extraction in an agent conversation against the fake provider (scripted JSON answers): add,
update and no-op decided by the model against the stored memories it is shown; the rules take over
when the model fails or answers badly; an incognito turn is recalled into but never remembered."""

from __future__ import annotations

import json
from typing import Any

import pytest
from librefang_memory.llm_extract import ExtractionFailed, parse

from tests.fakes.llm_server import Script

from .test_runtime_integration import say, system_prompt

EXTRACTION = ('[memory]\nembeddings = "off"\n'
              '[proactive_memory]\nextraction_model = "fake-extractor"\nextraction_provider = "openai"\n')


def answer(*memories: dict[str, Any]) -> Script:
    return Script(text=json.dumps({"memories": list(memories)}))


async def listed(client: Any, agent_id: str) -> list[dict[str, Any]]:
    return (await (await client.get(f"/api/memory/agents/{agent_id}")).get_json())["memories"]


async def test_the_model_adds_updates_and_leaves_alone(start_memory: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_memory(EXTRACTION)
    agent_id = await spawn(kernel, "llm-extractor")
    fake_llm.script(Script(text="Good luck, Ada!"), answer(
        {"content": "The user's name is Ada", "category": "personal_detail", "confidence": 0.95, "action": "add"},
        {"content": "The user is training for a marathon", "category": "project_context", "confidence": 0.9,
         "action": "add"}))
    await say(client, agent_id, "I'm Ada, and these days I'm training for a marathon.")
    extraction = fake_llm.requests[1]
    assert extraction.body["model"] == "fake-extractor"
    assert extraction.body["response_format"] == {"type": "json_object"}
    assert "extract long-term memories" in extraction.body["messages"][0]["content"]
    assert extraction.body["messages"][1]["content"] == (
        "Stored memories:\n(none)\n\nUser message:\nI'm Ada, and these days I'm training for a marathon.")
    memories = await listed(client, agent_id)
    assert sorted(m["content"] for m in memories) == ["The user is training for a marathon",
                                                      "The user's name is Ada"]
    assert {m["metadata"]["extractor"] for m in memories} == {"llm"}
    marathon = next(m for m in memories if "marathon" in m["content"])

    # an update of the memory the model was shown as M1
    fake_llm.script(Script(text="Nice."), answer(
        {"content": "The user is training for a half marathon", "category": "project_context",
         "confidence": 0.9, "action": "update", "target": "M1"}))
    await say(client, agent_id, "Correction: I'm training for a half marathon.")
    shown = fake_llm.requests[3].body["messages"][1]["content"]
    assert "M1: [project_context] The user is training for a marathon" in shown
    memories = await listed(client, agent_id)
    assert len(memories) == 2
    assert next(m for m in memories if m["id"] == marathon["id"])["content"] == \
        "The user is training for a half marathon"
    history = await (await client.get(f"/api/memory/items/{marathon['id']}/history")).get_json()
    assert [h["event"] for h in history["history"]] == ["ADD", "UPDATE"]

    # already known: nothing changes; the recalled memory is in the next turn's prompt
    fake_llm.script(Script(text="Yes."), answer(
        {"content": "The user is training for a half marathon", "category": "project_context",
         "action": "noop", "target": 1}))
    await say(client, agent_id, "Remember, the half marathon training?")
    assert "- The user is training for a half marathon" in system_prompt(fake_llm.requests[4])
    assert len(await listed(client, agent_id)) == 2
    stats = await (await client.get("/api/memory/stats")).get_json()
    assert stats["llm_extraction"] is True


async def test_rules_take_over_when_the_model_fails(start_memory: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_memory(EXTRACTION)
    agent_id = await spawn(kernel, "fallback")
    fake_llm.script(Script(text="Hi Grace."), Script(fault="auth"))
    await say(client, agent_id, "My name is Grace.")
    fake_llm.script(Script(text="Noted."), Script(text="I think you like tea."))  # no JSON
    await say(client, agent_id, "I prefer green tea.")
    fake_llm.script(Script(text="Ok."), answer({"content": "", "action": "add"}))  # malformed
    await say(client, agent_id, "I live in Lisbon.")
    memories = await listed(client, agent_id)
    assert sorted(m["content"] for m in memories) == ["The user lives in Lisbon", "The user prefers green tea",
                                                      "The user's name is Grace"]
    assert {m["metadata"]["extractor"] for m in memories} == {"rules"}
    assert [r.body["model"] for r in fake_llm.requests] == ["fake-model", "fake-extractor"] * 3


async def test_incognito_turns_are_recalled_into_but_not_remembered(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    agent_id = await spawn(kernel, "discreet")
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user's favorite color is teal"})
    fake_llm.script(Script(text="Teal."))
    r = await client.post(f"/api/agents/{agent_id}/message",
                          json={"message": "My favorite color is orange now. And my name is Zed.", "incognito": True})
    assert r.status_code == 200
    assert "- The user's favorite color is teal" in system_prompt(fake_llm.requests[0])
    await kernel.services["memory"].access.flush()
    memories = await listed(client, agent_id)
    assert [m["content"] for m in memories] == ["The user's favorite color is teal"]
    assert memories[0]["access_count"] == 0  # read without a trace
    await say(client, agent_id, "My name is Zed.")  # the same kind of message, not incognito: remembered
    assert "The user's name is Zed" in [m["content"] for m in await listed(client, agent_id)]


def test_parse_checks_the_answer() -> None:
    categories = ["preference", "personal_detail"]
    proposals = parse('```json\n{"memories": [{"content": " The user  likes tea ", "category": "unknown", '
                      '"confidence": 7, "action": "update", "target": "M9"}]}\n```', categories, 2)
    assert proposals[0].fact.content == "The user likes tea"
    assert proposals[0].fact.category == "preference" and proposals[0].fact.confidence == 1.0
    assert proposals[0].action == "add" and proposals[0].target is None  # M9 does not exist
    assert parse('{"memories": []}', categories, 0) == []
    for bad in ("no json", '{"facts": []}', '{"memories": [1]}', '{"memories": [{"content": "x", "action": "merge"}]}',
                '{"memories": [{"content": "x", "confidence": "high"}]}'):
        with pytest.raises(ExtractionFailed):
            parse(bad, categories, 1)

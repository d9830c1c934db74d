"""Session compaction: on demand and automatic, chunked, the plain fallback when the LLM fails, and
a cut that never separates a tool call from its result."""

from __future__ import annotations

from typing import Any

from librefang_providers.api import Message, ToolResultBlock, ToolUseBlock
from librefang_runtime.compactor import SUMMARY_PREFIX, estimate_tokens, fallback_summary, split_point

from tests.fakes.llm_server import Script


async def say(client: Any, agent_id: str, text: str) -> dict[str, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": text})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


def test_split_point_keeps_pairs_together() -> None:
    history = [Message("user", "q1"), Message("assistant", [ToolUseBlock("a", "t", {})]),
               Message("user", [ToolResultBlock("a", "r")]), Message("assistant", "a1"),
               Message("user", "q2"), Message("assistant", "a2")]
    assert split_point(history, 2) == 4
    assert split_point(history, 3) == 4  # index 3 is an assistant turn; 2 would cut the pair
    assert split_point(history, 4) == 4
    assert split_point(history, 6) == 0
    assert split_point([Message("user", [ToolResultBlock("a", "r")])], 1) == 1


def test_estimates_and_fallback() -> None:
    assert 20 <= estimate_tokens([Message("user", "x" * 100)]) <= 30
    assert estimate_tokens([Message("user", "漢" * 100)]) >= 150
    text = fallback_summary([Message("user", "book a flight"), Message("assistant", "done"), Message("user", "thanks")])
    assert text.startswith("3 earlier messages were removed") and "- book a flight" in text and "- thanks" in text


async def test_compact_on_demand_and_the_next_turn_sees_the_summary(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "chatty")
    for i in range(7):
        fake_llm.script(Script(text=f"answer {i}"))
        await say(client, agent_id, f"question {i}")
    fake_llm.script(Script(text="The user asked seven numbered questions."))
    response = await client.post(f"/api/agents/{agent_id}/session/compact")
    body = await response.get_json()
    assert response.status_code == 200 and body["message"] == "Compacted 4 messages into a summary; kept 10"
    summary_request = fake_llm.requests[-1].body["messages"]
    assert "USER: question 0" in summary_request[-1]["content"] and "ASSISTANT: answer 1" in summary_request[-1]["content"]
    assert "question 2" not in summary_request[-1]["content"]  # kept verbatim, not summarised
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["compacted_summary"] == "The user asked seven numbered questions."
    assert view["message_count"] == 11
    assert view["messages"][0]["content"] == f"{SUMMARY_PREFIX}\nThe user asked seven numbered questions."
    assert view["messages"][1]["content"] == "question 2"
    fake_llm.script(Script(text="ok"))
    await say(client, agent_id, "next")
    sent = fake_llm.requests[-1].body["messages"]
    assert sent[1]["role"] == "user" and SUMMARY_PREFIX in str(sent[1]["content"]) and "question 2" in str(sent[1]["content"])
    # search still finds kept messages, and the removed ones are gone from the index
    found = await (await client.get("/api/sessions/search?q=question")).get_json()
    assert "question 0" not in str(found)


async def test_nothing_to_compact_and_llm_failure_fallback(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "brief")
    response = await client.post(f"/api/agents/{agent_id}/session/compact")
    assert (await response.get_json())["message"] == "Nothing to compact"
    for i in range(6):
        fake_llm.script(Script(text=f"a{i}"))
        await say(client, agent_id, f"please remember item {i}")
    fake_llm.script(Script(fault="auth"))
    body = await (await client.post(f"/api/agents/{agent_id}/session/compact")).get_json()
    assert "plain summary" in body["message"]
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["compacted_summary"].startswith("2 earlier messages were removed")
    assert "- please remember item 0" in view["compacted_summary"]
    assert (await client.post("/api/agents/bad/session/compact")).status_code == 400


async def test_automatic_compaction_with_chunks(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[compaction]\nthreshold_messages = 6\nkeep_recent = 2\nmax_chunk_chars = 1000\n")
    agent_id = await spawn(kernel, "auto")
    for i in range(4):
        fake_llm.script(Script(text=f"long answer {i} " + "x" * 600))
        await say(client, agent_id, f"q{i} " + "y" * 300)
    # 6 stored messages before the 4th turn is not more than 6: no compaction yet
    assert len(fake_llm.requests) == 4
    # 8 stored messages: the 5th turn first compacts the oldest 6 (about 2,800 characters of
    # transcript: three 1,000-character chunks, then a merge), then runs
    fake_llm.script(Script(text="s1"), Script(text="s2"), Script(text="s3"), Script(text="merged summary"),
                    Script(text="final answer"))
    reply = await say(client, agent_id, "q4")
    assert reply["response"] == "final answer"
    prompts = [str(r.body["messages"][-1]["content"]) for r in fake_llm.requests[4:]]
    assert [p.startswith("Summarise this conversation") for p in prompts] == [True] * 4 + [False]
    assert "Part 1:\ns1" in prompts[3] and "Part 3:\ns3" in prompts[3]
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["compacted_summary"] == "merged summary"
    # summary + the kept turn (q3, answer 3) + this turn (q4, final answer)
    assert view["message_count"] == 5
    assert [m["content"][:2] for m in view["messages"][1:]] == ["q3", "lo", "q4", "fi"]
    final_request = fake_llm.requests[-1].body["messages"]
    assert "merged summary" in str(final_request[1]["content"])

"""Session compaction summaries are LLM calls too: they are metered, and refused (the plain summary is
used, nothing is sent) once the agent's budget is spent."""

from __future__ import annotations

from typing import Any

from tests.fakes.llm_server import Script

CONFIG = "[compaction]\nthreshold_messages = 0\nkeep_recent = 2\n"


async def chat(client: Any, agent_id: str, turns: int) -> None:
    for index in range(turns):
        response = await client.post(f"/api/agents/{agent_id}/message", json={"message": f"message {index}"})
        assert response.status_code == 200, await response.get_json()


async def test_a_compaction_summary_is_metered(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start(CONFIG)
    agent_id = await spawn(kernel, "compacted")
    await chat(client, agent_id, 3)
    fake_llm.script(Script(text="summary of the talk", usage={"input": 300_000, "output": 1000}))
    response = await client.post(f"/api/agents/{agent_id}/session/compact")
    body = await response.get_json()
    assert response.status_code == 200 and "plain summary" not in body["message"], body
    summary = await (await client.get("/api/usage/summary")).get_json()
    assert summary["call_count"] == 4 and summary["total_input_tokens"] >= 300_000
    usage = await (await client.get(f"/api/budget/agents/{agent_id}")).get_json()
    assert usage["hourly"]["spend"] >= 0.3


async def test_a_spent_budget_refuses_the_summary_call_and_the_plain_summary_is_used(
        start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start(CONFIG)
    agent_id = await spawn(kernel, "broke", "[resources]\nmax_cost_per_day_usd = 0.5\n")
    fake_llm.script(Script(text="a"), Script(text="b"), Script(text="pricey", usage={"input": MILLION_HALF, "output": 0}))
    await chat(client, agent_id, 3)
    fake_llm.script(Script(text="cheap"))
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "more"})
    assert response.status_code == 429
    sent = len(fake_llm.requests)
    response = await client.post(f"/api/agents/{agent_id}/session/compact")
    body = await response.get_json()
    assert response.status_code == 200 and "plain summary" in body["message"], body
    assert len(fake_llm.requests) == sent  # the summary call never reached the provider


MILLION_HALF = 500_000

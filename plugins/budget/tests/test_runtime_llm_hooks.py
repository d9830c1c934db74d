"""The runtime's ``before_llm_call`` / ``after_llm_call`` hooks (added for budgets and metering): every
model call of a turn is announced before and reported after, and a refusal fails the turn unsent."""

from __future__ import annotations

from typing import Any

from librefang import hookimpl
from librefang.errors import TooManyRequests

from tests.fakes.llm_server import Script, ToolCall


class Observer:
    def __init__(self, refuse_at: int | None = None) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[dict[str, Any]] = []
        self.refuse_at = refuse_at

    @hookimpl
    async def before_llm_call(self, kernel: Any, call: dict[str, Any]) -> None:
        self.before.append(dict(call))
        if self.refuse_at is not None and call["iteration"] >= self.refuse_at:
            raise TooManyRequests("no more calls", code="budget_exceeded")

    @hookimpl
    def after_llm_call(self, kernel: Any, call: dict[str, Any]) -> None:
        self.after.append(dict(call))


async def test_every_call_of_a_turn_is_announced_and_reported(start: Any, spawn: Any, fake_llm: Any) -> None:
    observer = Observer()
    kernel, client = await start(plugins={"observer": observer}, budget=False)
    agent_id = await spawn(kernel, "hooked")
    fake_llm.script(
        Script(tool_calls=[ToolCall("system_time", {}, id="t1")], usage={"input": 100, "output": 7, "cache_read": 40}),
        Script(text="done", usage={"input": 120, "output": 3}),
    )
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "time?"})
    assert response.status_code == 200, await response.get_json()
    assert [c["iteration"] for c in observer.before] == [1, 2]
    assert all(c["agent_id"] == agent_id and c["agent_name"] == "hooked" for c in observer.before)
    assert [(c["provider"], c["model"]) for c in observer.after] == [("openai", "fake-model")] * 2
    first, second = observer.after
    assert (first["usage"].input_tokens, first["usage"].output_tokens, first["usage"].cache_read_tokens) == (100, 7, 40)
    assert first["tool_calls"] == 1 and second["tool_calls"] == 0
    assert second["usage"].input_tokens == 120 and first["latency_ms"] > 0


async def test_a_refusal_fails_the_turn_before_the_provider_is_called(start: Any, spawn: Any, fake_llm: Any) -> None:
    observer = Observer(refuse_at=2)
    kernel, client = await start(plugins={"observer": observer}, budget=False)
    agent_id = await spawn(kernel, "refused")
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t1")]), Script(text="never sent"))
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "time?"})
    body = await response.get_json()
    assert response.status_code == 429 and body["code"] == "budget_exceeded", body
    assert len(fake_llm.requests) == 1  # the second call never reached the provider
    assert len(observer.after) == 1

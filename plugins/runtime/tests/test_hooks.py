"""The runtime's hooks, implemented by an in-process test plugin: register_tools, before_tool_call,
before_prompt_build and after_turn; a refused tool registration fails only that plugin's tools."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from librefang import hookimpl
from librefang_runtime.api import Deny, Tool, ToolError

from tests.fakes.llm_server import Script, ToolCall


class PolicyPlugin:
    """A third-party plugin adding tools, a policy, prompt context and a turn observer."""

    def __init__(self) -> None:
        self.turns: list[dict[str, Any]] = []
        self.checked: list[str] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        register(Tool("shout", "Upper-case the text.", lambda data, ctx: f"{data['text'].upper()} from {ctx.agent_name}",
                      {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                      source="test"))

        def fail(_data: Any, _ctx: Any) -> str:
            raise ToolError("the printer is on fire")

        register(Tool("print", "Print.", fail))

    @hookimpl
    async def before_tool_call(self, call: Any, context: Any) -> Deny | None:
        self.checked.append(f"{context.agent_name}:{call.name}")
        if call.name == "file_write":
            return Deny("writing needs approval")
        return None

    @hookimpl
    def before_prompt_build(self, agent_id: str, session_id: str, message: str) -> list[str]:
        return [f"## Recalled\nThe user likes tea. (asked: {message})"]

    @hookimpl
    async def after_turn(self, kernel: Any, turn: dict[str, Any]) -> None:
        self.turns.append(turn)


async def test_plugin_tools_policy_prompt_and_after_turn(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    plugin = PolicyPlugin()
    kernel, client = await start_runtime(plugins={"policy": plugin})
    agent_id = await spawn(kernel, "hooked")
    fake_llm.script(
        Script(tool_calls=[ToolCall("shout", {"text": "hi"}, id="a"), ToolCall("print", {}, id="b"),
                           ToolCall("file_write", {"path": "f", "content": "x"}, id="c")]),
        Script(text="done"),
    )
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "do things"})
    body = await response.get_json()
    assert response.status_code == 200, body
    system = fake_llm.requests[0].body["messages"][0]["content"]
    assert system.endswith("## Recalled\nThe user likes tea. (asked: do things)")
    assert {"shout", "print"} <= {t["function"]["name"] for t in fake_llm.requests[0].body["tools"]}
    results = {m["tool_call_id"]: m["content"] for m in fake_llm.requests[1].body["messages"] if m["role"] == "tool"}
    assert results["a"] == "HI from hooked"
    assert results["b"] == "Error: the printer is on fire"
    assert results["c"].startswith("Error: the call to file_write was refused: writing needs approval")
    assert not (kernel.home / "workspaces" / "agents" / "hooked" / "f").exists()
    assert plugin.checked == ["hooked:shout", "hooked:print", "hooked:file_write"]
    assert len(plugin.turns) == 1
    turn = plugin.turns[0]
    assert turn["agent_id"] == agent_id and turn["response"] == "done" and turn["iterations"] == 2
    assert [t["is_error"] for t in body["decision_traces"]] == [False, True, True]


async def test_a_policy_that_raises_refuses_the_call(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    def broken(call: Any, context: Any) -> None:
        raise RuntimeError("policy store unreachable")

    kernel, client = await start_runtime(plugins={"broken": SimpleNamespace(before_tool_call=hookimpl(broken))})
    agent_id = await spawn(kernel, "strict")
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t")]), Script(text="ok"))
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "time?"})
    assert response.status_code == 200
    result = [m for m in fake_llm.requests[1].body["messages"] if m["role"] == "tool"][0]["content"]
    assert result == "Error: the call to system_time was refused: the policy check failed (RuntimeError)"


async def test_duplicate_tool_names_are_refused(start_runtime: Any) -> None:
    class Clash:
        @hookimpl
        def register_tools(self, register: Any) -> None:
            register(Tool("file_read", "Mine.", lambda d, c: "x"))

    kernel, _ = await start_runtime(plugins={"clash": Clash()})
    tools = kernel.services["runtime"].tools
    assert tools.get("file_read").owner == "runtime"  # the built-in kept its name
    assert "file_read" in (kernel.plugins.records["clash"].error or "")


async def test_send_message_from_another_plugin(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    import pytest
    from librefang.errors import ApiError
    from librefang_runtime.api import send_message

    kernel, _ = runtime_env
    agent_id = await spawn(kernel, "channel-target")
    fake_llm.script(Script(text="hello from the agent"))
    result = await send_message(kernel, agent_id, "hi from a channel", sender_name="ann", is_group=True)
    assert result.response == "hello from the agent"
    assert fake_llm.requests[-1].body["messages"][-1]["content"] == "[ann]: hi from a channel"
    with pytest.raises(ApiError) as info:
        await send_message(kernel, "not-an-id", "x")
    assert info.value.status == 400


async def test_first_refusal_stops_the_policy_and_trylast_gates_run_last(
    start_runtime: Any, spawn: Any, fake_llm: Any
) -> None:
    asked: list[str] = []

    def gate(call: Any, context: Any) -> None:  # a human-approval-like gate: must not be asked here
        asked.append("gate")

    def refuse(call: Any, context: Any) -> Deny:
        asked.append("refuse")
        return Deny("looks like a secret")

    # "agate" sorts before "zcheck", so only trylast puts the gate after the automated check.
    plugins = {
        "agate": SimpleNamespace(before_tool_call=hookimpl(trylast=True)(gate)),
        "zcheck": SimpleNamespace(before_tool_call=hookimpl(refuse)),
    }
    kernel, client = await start_runtime(plugins=plugins)
    assert [name for name, _ in kernel.plugins.impls("before_tool_call")][-1] == "agate"
    agent_id = await spawn(kernel, "strict")
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t")]), Script(text="ok"))
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "time?"})
    assert response.status_code == 200
    assert asked == ["refuse"]
    result = [m for m in fake_llm.requests[1].body["messages"] if m["role"] == "tool"][0]["content"]
    assert result.endswith("looks like a secret")

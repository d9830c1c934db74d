"""``agent_list``, ``agent_send`` (capability check, reply, cycle refused) and ``agent_spawn``
(children never exceed the parent) through real turns against the fake provider."""

from __future__ import annotations

from typing import Any

from librefang_agents import api as agents_api

from tests.fakes.llm_server import Script, ToolCall

MANIFEST = """name = "{name}"
[model]
provider = "openai"
model = "fake-model"
[capabilities]
tools = ["agent_*", "file_read", "system_time"]
agent_message = {message}
agent_spawn = {spawn}
"""


def manifest(name: str, message: str = "[]", spawn: bool = False) -> str:
    return MANIFEST.format(name=name, message=message, spawn=str(spawn).lower())


def tool_results(fake: Any, index: int) -> list[str]:
    return [m["content"] for m in fake.requests[index].body["messages"] if m["role"] == "tool"]


async def say(client: Any, agent_id: str, text: str) -> dict[str, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": text})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def test_agent_send_gets_the_other_agents_reply(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    boss = await spawn(kernel, "boss", manifest("boss", '["work*"]'))
    worker = await spawn(kernel, "worker", manifest("worker"))
    fake_llm.script(
        Script(tool_calls=[ToolCall("agent_list", {}, id="l"), ToolCall("agent_send", {"agent": "worker",
                                                                                      "message": "count to 3"}, id="s")]),
        Script(text="1, 2, 3"),  # the worker's turn
        Script(text="The worker counted."),
    )
    reply = await say(client, boss, "delegate")
    assert reply["response"] == "The worker counted."
    listing, answer = tool_results(fake_llm, 2)
    assert "- boss (you)" in listing and f"id={worker}" in listing
    assert answer == "1, 2, 3"
    assert fake_llm.requests[1].body["messages"][-1]["content"] == "count to 3"
    # the worker's side of the exchange is in the worker's own session
    view = await (await client.get(f"/api/agents/{worker}/session")).get_json()
    assert [m["content"] for m in view["messages"]] == ["count to 3", "1, 2, 3"]


async def test_agent_send_needs_the_capability_and_refuses_cycles(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    alice = await spawn(kernel, "alice", manifest("alice", '["bob"]'))
    await spawn(kernel, "bob", manifest("bob", '["alice"]'))
    await spawn(kernel, "carol", manifest("carol"))
    fake_llm.script(
        Script(tool_calls=[ToolCall("agent_send", {"agent": "carol", "message": "hi"}, id="c"),
                           ToolCall("agent_send", {"agent": "alice", "message": "me?"}, id="self"),
                           ToolCall("agent_send", {"agent": "bob", "message": "ask alice"}, id="b")]),
        Script(tool_calls=[ToolCall("agent_send", {"agent": "alice", "message": "back to you"}, id="cycle")]),  # bob
        Script(text="bob gives up"),  # bob's second call
        Script(text="done"),  # alice's final call
    )
    reply = await say(client, alice, "go")
    assert reply["response"] == "done"
    carol, self_call, bob = tool_results(fake_llm, 3)
    assert "may not message 'carol'" in carol
    assert "may not message 'alice'" in self_call
    assert bob == "bob gives up"
    assert "already waiting in this conversation" in tool_results(fake_llm, 2)[0]


async def test_agent_spawn_never_exceeds_the_parent(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    parent = await spawn(kernel, "parent", manifest("parent", spawn=True))
    lonely = await spawn(kernel, "lonely", manifest("lonely"))
    child_ok = 'name = "kid"\n[capabilities]\ntools = ["file_read"]\n'
    child_bad = 'name = "rogue"\n[capabilities]\ntools = ["file_read"]\nshell = ["*"]\n'
    fake_llm.script(
        Script(tool_calls=[ToolCall("agent_spawn", {"manifest_toml": child_ok}, id="ok"),
                           ToolCall("agent_spawn", {"manifest_toml": child_bad}, id="bad")]),
        Script(text="spawned"),
        Script(tool_calls=[ToolCall("agent_spawn", {"manifest_toml": 'name = "orphan"\n'}, id="no")]),
        Script(text="could not"),
    )
    await say(client, parent, "make children")
    ok, bad = tool_results(fake_llm, 1)
    assert ok.startswith("Spawned agent 'kid'")
    assert bad.startswith("Error: spawn refused") and "shell" in bad  # the OpenAI driver prefixes errors
    registry = agents_api.registry(kernel)
    kid = await registry.find("kid")
    assert kid is not None and kid.parent_id == parent
    assert await registry.find("rogue") is None
    await say(client, lonely, "try")
    # an agent without capabilities.agent_spawn is not even offered the tool
    assert "agent_spawn" not in [t["function"]["name"] for t in fake_llm.requests[2].body["tools"]]
    assert "unknown tool 'agent_spawn'" in tool_results(fake_llm, 3)[0]
    assert await registry.find("orphan") is None

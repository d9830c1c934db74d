"""Memory in an agent conversation against the fake provider: extraction after a turn, recall into
the prompt the fake server receives, the per-agent and global switches, and the KV tools."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.llm_server import Script, ToolCall

from .conftest import AGENT


def system_prompt(request: Any) -> str:
    return request.body["messages"][0]["content"]


async def say(client: Any, agent_id: str, text: str) -> dict[str, Any]:
    r = await client.post(f"/api/agents/{agent_id}/message", json={"message": text})
    body = await r.get_json()
    assert r.status_code == 200, body
    return body


async def test_extracted_memory_is_recalled_into_the_prompt(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    agent_id = await spawn(kernel, "rememberer")
    fake_llm.script(Script(text="Nice to meet you, Ada."), Script(text="Teal, of course."))
    await say(client, agent_id, "Hello! My name is Ada and my favorite color is teal.")
    assert "Personal context" not in system_prompt(fake_llm.requests[0])
    listed = await (await client.get(f"/api/memory/agents/{agent_id}")).get_json()
    assert sorted(m["content"] for m in listed["memories"]) == ["The user's favorite color is teal",
                                                               "The user's name is Ada"]
    assert {m["source"] for m in listed["memories"]} == {"extraction"}
    await say(client, agent_id, "Which color do I like? It is my favorite.")
    prompt = system_prompt(fake_llm.requests[1])
    assert "## Personal context" in prompt
    assert "- The user's favorite color is teal" in prompt
    # the same fact said again is a no-op; a changed one is an update
    fake_llm.script(Script(text="ok"), Script(text="ok"))
    await say(client, agent_id, "my favorite color is teal")
    await say(client, agent_id, "Actually my favorite color is orange now.")
    listed = await (await client.get(f"/api/memory/agents/{agent_id}")).get_json()
    assert sorted(m["content"] for m in listed["memories"]) == ["The user's favorite color is orange",
                                                               "The user's name is Ada"]


async def test_memories_of_one_agent_stay_out_of_another_agents_prompt(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    a, b = await spawn(kernel, "agent-a"), await spawn(kernel, "agent-b")
    await client.post("/api/memory", json={"agent_id": a, "content": "The secret project is called Bluebird"})
    fake_llm.script(Script(text="no idea"))
    await say(client, b, "What is the secret project called?")
    assert "Bluebird" not in system_prompt(fake_llm.requests[0])


async def test_per_agent_switch(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    toml = AGENT.format(name="forgetful") + "[proactive_memory]\nauto_retrieve = false\nauto_memorize = false\n"
    agent_id = await spawn(kernel, "forgetful", toml)
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user's favorite food is ramen"})
    fake_llm.script(Script(text="hm"))
    await say(client, agent_id, "My favorite food? Also, my name is Zed.")
    assert "ramen" not in system_prompt(fake_llm.requests[0])
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/count")).get_json())["count"] == 1


async def test_global_switch(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    agent_id = await spawn(kernel, "switched")
    await client.post("/api/memory", json={"agent_id": agent_id, "content": "The user's favorite food is ramen"})
    assert (await client.patch("/api/memory/config", json={"enabled": False})).status_code == 200
    fake_llm.script(Script(text="hm"), Script(text="hm"))
    await say(client, agent_id, "My favorite food? Also, my name is Zed.")
    assert "ramen" not in system_prompt(fake_llm.requests[0])
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/count")).get_json())["count"] == 1
    await client.patch("/api/memory/config", json={"enabled": True})
    await say(client, agent_id, "My favorite food? Also, my name is Zed.")
    assert "- The user's favorite food is ramen" in system_prompt(fake_llm.requests[1])
    assert (await (await client.get(f"/api/memory/agents/{agent_id}/count")).get_json())["count"] == 2


async def test_kv_tools_use_the_agents_own_namespace(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    owner, other = await spawn(kernel, "owner"), await spawn(kernel, "other")
    await client.put(f"/api/memory/agents/{other}/kv/secret", json={"value": "not yours"})
    fake_llm.script(
        Script(tool_calls=[ToolCall("memory_store", {"key": "plan", "value": {"step": 1}}, id="s"),
                           ToolCall("memory_recall", {"key": "plan"}, id="r"),
                           ToolCall("memory_list", {}, id="l"),
                           ToolCall("memory_recall", {"key": "secret"}, id="own"),
                           ToolCall("memory_recall", {"key": "secret", "namespace": other}, id="x"),
                           ToolCall("memory_store", {"key": "bad key", "value": 1}, id="bad")]),
        Script(text="done"),
    )
    await say(client, owner, "remember the plan")
    results = {m["tool_call_id"]: m["content"] for m in fake_llm.requests[1].body["messages"] if m["role"] == "tool"}
    assert results["s"] == "Stored 'plan' (version 1)."
    assert json.loads(results["r"]) == {"step": 1}
    assert results["l"] == "plan"
    assert results["own"] == "Nothing is stored under 'secret'."
    assert results["x"].startswith("Error:") and "memory_read" in results["x"]
    assert results["bad"].startswith("Error:") and "key may only contain" in results["bad"]
    body = await (await client.get(f"/api/memory/agents/{owner}/kv/plan")).get_json()
    assert body["value"] == {"step": 1}


async def test_capability_grants_the_shared_namespace(env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = env
    toml = AGENT.format(name="sharer") + '[capabilities]\nmemory_read = ["shared.*"]\nmemory_write = ["shared.team*"]\n'
    agent_id = await spawn(kernel, "sharer", toml)
    shared = "00000000-0000-0000-0000-000000000001"
    await client.put(f"/api/memory/agents/{shared}/kv/motto", json={"value": "ship it"})
    fake_llm.script(
        Script(tool_calls=[ToolCall("memory_recall", {"key": "motto", "namespace": "shared"}, id="r"),
                           ToolCall("memory_store", {"key": "team_size", "value": 5, "namespace": "shared"}, id="w"),
                           ToolCall("memory_store", {"key": "motto", "value": "x", "namespace": "shared"}, id="no")]),
        Script(text="done"),
    )
    await say(client, agent_id, "check the shared memory")
    results = {m["tool_call_id"]: m["content"] for m in fake_llm.requests[1].body["messages"] if m["role"] == "tool"}
    assert results["r"] == '"ship it"'
    assert results["w"].startswith("Stored")
    assert results["no"].startswith("Error:") and "memory_write" in results["no"]
    assert (await (await client.get(f"/api/memory/agents/{shared}/kv/motto")).get_json())["value"] == "ship it"

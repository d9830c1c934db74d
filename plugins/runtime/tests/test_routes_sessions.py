"""Session management over HTTP: several sessions per agent, switch, labels, reset, history clear,
export/import, global list/get/delete, full-text search and cleanup; bad input on each."""

from __future__ import annotations

import uuid
from typing import Any

from librefang_agents import api as agents_api

from tests.fakes.llm_server import Script


async def say(client: Any, agent_id: str, text: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": text, **extra})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def call(client: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await getattr(client, method)(path, **kwargs)
    return response.status_code, await response.get_json()


async def test_create_switch_label_and_list(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "multi")
    first = (await say(client, agent_id, "first session talk"))["session_id"]
    status, created = await call(client, "post", f"/api/agents/{agent_id}/sessions", json={"label": "research"})
    assert status == 200 and created["label"] == "research"
    second = created["session_id"]
    # the new session is now the agent's current one
    reply = await say(client, agent_id, "second session talk")
    assert reply["session_id"] == second
    assert [m["role"] for m in fake_llm.requests[-1].body["messages"]] == ["system", "user"]
    status, listing = await call(client, "get", f"/api/agents/{agent_id}/sessions")
    assert status == 200 and listing["total"] == 2
    by_id = {s["session_id"]: s for s in listing["sessions"]}
    assert by_id[second]["is_canonical"] and not by_id[first]["is_canonical"]
    assert by_id[first]["message_count"] == 2 and by_id[second]["label"] == "research"
    status, found = await call(client, "get", f"/api/agents/{agent_id}/sessions/by-label/research")
    assert status == 200 and found["session_id"] == second
    status, body = await call(client, "post", f"/api/agents/{agent_id}/sessions/{first}/switch")
    assert status == 200 and body["message"] == "Session switched"
    assert (await agents_api.registry(kernel).get(agent_id)).session_id == first
    reply = await say(client, agent_id, "back in the first")
    assert reply["session_id"] == first
    # labels: set, clash (409), clear
    status, body = await call(client, "put", f"/api/sessions/{first}/label", json={"label": "chat"})
    assert status == 200 and body["label"] == "chat"
    status, body = await call(client, "put", f"/api/sessions/{first}/label", json={"label": "research"})
    assert status == 409 and body["code"] == "label_taken"
    status, body = await call(client, "put", f"/api/sessions/{first}/label", json={"label": None})
    assert status == 200 and body["label"] is None
    # bad input
    assert (await call(client, "post", f"/api/agents/{agent_id}/sessions", json={"label": "x" * 200}))[0] == 400
    assert (await call(client, "post", f"/api/agents/{agent_id}/sessions", json={"nope": 1}))[0] == 400
    assert (await call(client, "post", f"/api/agents/{agent_id}/sessions/bad/switch"))[0] == 400
    assert (await call(client, "post", f"/api/agents/{agent_id}/sessions/{uuid.uuid4()}/switch"))[0] == 404
    assert (await call(client, "get", f"/api/agents/{agent_id}/sessions/by-label/none-such"))[0] == 404
    assert (await call(client, "get", "/api/agents/bad/sessions"))[0] == 400
    assert (await call(client, "get", f"/api/agents/{uuid.uuid4()}/sessions"))[0] == 404
    assert (await call(client, "put", f"/api/sessions/{uuid.uuid4()}/label", json={"label": "a"}))[0] == 404
    assert (await call(client, "put", "/api/sessions/bad/label", json={"label": "a"}))[0] == 400


async def test_a_session_cannot_switch_to_another_agents(runtime_env: Any, spawn: Any) -> None:
    kernel, client = runtime_env
    mine = await spawn(kernel, "mine")
    theirs = await spawn(kernel, "theirs")
    _, created = await call(client, "post", f"/api/agents/{theirs}/sessions", json={})
    status, body = await call(client, "post", f"/api/agents/{mine}/sessions/{created['session_id']}/switch")
    assert status == 404 and body["code"] == "session_not_found"


async def test_reset_and_history_clear(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "forgetful")
    await say(client, agent_id, "remember me")
    await call(client, "post", f"/api/agents/{agent_id}/sessions", json={"label": "other"})
    await say(client, agent_id, "in other")
    status, body = await call(client, "post", f"/api/agents/{agent_id}/session/reset")
    assert status == 200 and body["message"] == "Session reset"
    _, listing = await call(client, "get", f"/api/agents/{agent_id}/sessions")
    assert listing["total"] == 1 and listing["sessions"][0]["message_count"] == 0
    assert listing["sessions"][0]["session_id"] == body["session_id"]
    await say(client, agent_id, "fresh start")
    assert [m["role"] for m in fake_llm.requests[-1].body["messages"]] == ["system", "user"]
    status, body = await call(client, "delete", f"/api/agents/{agent_id}/history")
    assert status == 200 and body["deleted"] == 1
    _, listing = await call(client, "get", f"/api/agents/{agent_id}/sessions")
    assert listing["total"] == 0
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["messages"] == [] and view["message_count"] == 0
    assert (await call(client, "post", "/api/agents/bad/session/reset"))[0] == 400
    assert (await call(client, "delete", f"/api/agents/{uuid.uuid4()}/history"))[0] == 404


async def test_export_and_import(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    source = await spawn(kernel, "exporter")
    target = await spawn(kernel, "importer")
    session_id = (await say(client, source, "the capital of France?"))["session_id"]
    status, exported = await call(client, "get", f"/api/agents/{source}/sessions/{session_id}/export")
    assert status == 200
    assert exported["agent_name"] == "exporter" and exported["session_id"] == session_id
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][0]["content"] == [{"type": "text", "text": "the capital of France?"}]
    status, imported = await call(client, "post", f"/api/agents/{target}/sessions/import", json=exported)
    assert status == 200 and imported["message"] == "Session imported successfully"
    assert imported["session_id"] != session_id
    status, switched = await call(client, "post", f"/api/agents/{target}/sessions/{imported['session_id']}/switch")
    assert status == 200
    await say(client, target, "and of Spain?")
    sent = fake_llm.requests[-1].body["messages"]
    assert [m["content"] for m in sent[1:]] == ["the capital of France?", exported["messages"][1]["content"][0]["text"],
                                                "and of Spain?"]
    # plain-text content is accepted too; bad documents are refused
    status, _ = await call(client, "post", f"/api/agents/{target}/sessions/import",
                           json={"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    for bad in ({"messages": [{"role": "system", "content": "x"}]},
                {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
                {"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
                {"version": 2, "messages": []}, {}):
        status, body = await call(client, "post", f"/api/agents/{target}/sessions/import", json=bad)
        assert status == 400, bad
    assert (await call(client, "get", f"/api/agents/{target}/sessions/{session_id}/export"))[0] == 404
    assert (await call(client, "get", f"/api/agents/{source}/sessions/{session_id}/export?format=xml"))[0] == 400


async def test_global_list_get_delete_search_and_cleanup(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    one = await spawn(kernel, "one")
    two = await spawn(kernel, "two")
    fake_llm.script(Script(text="Bananas are yellow."), Script(text="The sky is blue today."))
    s1 = (await say(client, one, "tell me about bananas"))["session_id"]
    s2 = (await say(client, two, "what colour is the sky"))["session_id"]
    status, listing = await call(client, "get", "/api/sessions")
    assert status == 200 and listing["total"] == 2
    assert {s["session_id"] for s in listing["sessions"]} == {s1, s2}
    status, listing = await call(client, "get", f"/api/sessions?agent_id={one}&limit=1")
    assert listing["total"] == 1 and listing["sessions"][0]["session_id"] == s1
    status, detail = await call(client, "get", f"/api/sessions/{s2}")
    assert status == 200 and detail["agent_id"] == two and detail["messages"][1]["content"] == "The sky is blue today."
    # search: every word must match; results carry a snippet
    status, found = await call(client, "get", "/api/sessions/search?q=bananas")
    assert status == 200 and found["total"] == 2  # the question and the answer
    assert {r["session_id"] for r in found["results"]} == {s1}
    assert {r["role"] for r in found["results"]} == {"user", "assistant"}
    assert all("banana" in r["snippet"].lower() for r in found["results"])
    status, found = await call(client, "get", "/api/sessions/search?q=sky%20blue")
    assert [r["session_id"] for r in found["results"]] == [s2]
    status, found = await call(client, "get", f"/api/sessions/search?q=sky&agent_id={one}")
    assert found["total"] == 0
    status, found = await call(client, "get", '/api/sessions/search?q="%20OR%20*')
    assert status == 200 and found["total"] == 0  # FTS syntax in q is treated as words, never an error
    assert (await call(client, "get", "/api/sessions/search"))[0] == 400
    assert (await call(client, "get", "/api/sessions/search?q=" + "x" * 600))[0] == 400
    # delete one session
    status, body = await call(client, "delete", f"/api/sessions/{s1}")
    assert status == 200
    assert (await call(client, "get", f"/api/sessions/{s1}"))[0] == 404
    assert (await call(client, "get", "/api/sessions/search?q=bananas"))[1]["total"] == 0
    assert (await call(client, "delete", f"/api/sessions/{s1}"))[0] == 404
    assert (await call(client, "get", "/api/sessions/not-a-uuid"))[0] == 400
    assert (await call(client, "get", "/api/sessions?limit=0"))[0] == 400
    # cleanup removes the sessions of an agent that was killed
    await agents_api.registry(kernel).kill(two)
    status, body = await call(client, "post", "/api/sessions/cleanup")
    assert status == 200 and body["deleted"] == 1
    assert (await call(client, "get", "/api/sessions"))[1]["total"] == 0

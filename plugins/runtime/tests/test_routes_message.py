"""``POST /api/agents/{id}/message`` and ``GET /api/agents/{id}/session`` in-process, against the
fake provider server: replies, tools, sessions, usage, ordering, persistence and bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import sqlalchemy as sa
from librefang.app import build_app
from librefang.testing import make_client
from librefang_agents import api as agents_api
from librefang_runtime.models import usage as usage_table

from tests.fakes.llm_server import Script, ToolCall


async def post(client: Any, agent_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json=body)
    return response.status_code, await response.get_json()


async def test_text_reply_with_usage_session_and_event(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "alpha")
    fake_llm.script(Script(text="Hi! I am alpha.", usage={"input": 30, "output": 7}))
    with kernel.bus.subscribe("runtime.*") as events:
        status, body = await post(client, agent_id, {"message": "hello"})
        event = events.queue.get_nowait()
    assert status == 200, body
    assert body["response"] == "Hi! I am alpha."
    assert (body["input_tokens"], body["output_tokens"], body["iterations"]) == (30, 7, 1)
    assert body["provider"] == "openai" and body["model"] == "fake-model"
    session_id = body["session_id"]
    uuid.UUID(session_id)
    assert "decision_traces" not in body  # omitted when empty, as the reference does
    # the system prompt came from the manifest, with identity, date and tools
    system = fake_llm.requests[0].body["messages"][0]["content"]
    assert system.startswith("You are a careful test agent.") and "Your name is alpha." in system
    assert "## Current date" in system and "- file_read:" in system
    # usage stored per turn and published on the bus
    assert event.topic == "runtime.turn_completed"
    assert event.data["agent_id"] == agent_id and event.data["input_tokens"] == 30
    async with kernel.db.begin() as conn:
        rows = (await conn.execute(sa.select(usage_table))).all()
    assert [(r.agent_id, r.session_id, r.provider, r.model, r.input_tokens, r.output_tokens) for r in rows] == [
        (agent_id, session_id, "openai", "fake-model", 30, 7)]
    # the session holds the turn
    response = await client.get(f"/api/agents/{agent_id}/session")
    view = await response.get_json()
    assert response.status_code == 200
    assert view["session_id"] == session_id and view["message_count"] == 2
    assert [(m["role"], m["content"]) for m in view["messages"]] == [("User", "hello"), ("Assistant", "Hi! I am alpha.")]


async def test_history_carries_into_the_next_turn(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "memo")
    fake_llm.script(Script(text="Noted: blue."), Script(text="Blue."))
    await post(client, agent_id, {"message": "my colour is blue"})
    status, body = await post(client, agent_id, {"message": "what is my colour?"})
    assert status == 200 and body["response"] == "Blue."
    sent = fake_llm.requests[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "my colour is blue" and sent[2]["content"] == "Noted: blue."


async def test_tool_call_over_http_and_session_view(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "writer")
    fake_llm.script(
        Script(text="Saving.", tool_calls=[ToolCall("file_write", {"path": "todo.md", "content": "- milk"}, id="w1")]),
        Script(text="Saved your list."),
    )
    status, body = await post(client, agent_id, {"message": "save my list"})
    assert status == 200, body
    assert body["response"] == "Saved your list." and body["iterations"] == 2
    assert body["decision_traces"][0]["tool_name"] == "file_write"
    workspace = kernel.home / "workspaces" / "agents" / "writer"
    assert (workspace / "todo.md").read_text() == "- milk"
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["message_count"] == 4
    roles = [m["role"] for m in view["messages"]]
    assert roles == ["User", "Assistant", "Assistant"]  # the tool-result turn is folded into the call
    tool = view["messages"][1]["tools"][0]
    assert tool["name"] == "file_write" and tool["input"] == {"path": "todo.md", "content": "- milk"}
    assert tool["result"] == "Wrote 6 bytes to todo.md" and tool["is_error"] is False


async def test_pinned_sessions(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    first = await spawn(kernel, "one")
    second = await spawn(kernel, "two")
    pinned = str(uuid.uuid4())
    status, body = await post(client, first, {"message": "in a side tab", "session_id": pinned})
    assert status == 200 and "session_id" not in body  # not echoed when the caller pinned it
    view = await (await client.get(f"/api/agents/{first}/session?session_id={pinned}")).get_json()
    assert [m["content"] for m in view["messages"]][0] == "in a side tab"
    canonical = await (await client.get(f"/api/agents/{first}/session")).get_json()
    assert canonical["messages"] == []  # the canonical session was not touched
    status, body = await post(client, second, {"message": "steal", "session_id": pinned})
    assert status == 400 and body["code"] == "session_agent_mismatch"
    status, body = await post(client, first, {"message": "x", "session_id": "not-a-uuid"})
    assert status == 400 and body["code"] == "invalid_session_id"
    response = await client.get(f"/api/agents/{second}/session?session_id={pinned}")
    assert response.status_code == 400
    response = await client.get(f"/api/agents/{first}/session?session_id={uuid.uuid4()}")
    assert response.status_code == 404
    response = await client.get(f"/api/agents/{first}/session?session_id=nope")
    assert response.status_code == 400


async def test_ephemeral_and_incognito_store_nothing(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "quiet")
    fake_llm.script(Script(text="kept"), Script(text="side answer"), Script(text="private answer"))
    await post(client, agent_id, {"message": "remember this"})
    status, body = await post(client, agent_id, {"message": "btw?", "ephemeral": True})
    assert status == 200 and body["response"] == "side answer"
    assert [m["role"] for m in fake_llm.requests[1].body["messages"]] == ["system", "user"]  # no history read
    status, body = await post(client, agent_id, {"message": "secret", "incognito": True})
    assert status == 200 and body["response"] == "private answer"
    assert len(fake_llm.requests[2].body["messages"]) == 4  # history read
    fake_llm.script(Script(text="btw answer"))
    status, body = await post(client, agent_id, {"message": "/btw quick one?"})  # the /btw prefix: ephemeral
    assert status == 200 and body["response"] == "btw answer"
    assert fake_llm.requests[3].body["messages"][1:] == [{"role": "user", "content": "quick one?"}]
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert [m["content"] for m in view["messages"]] == ["remember this", "kept"]


async def test_messages_to_one_session_run_one_at_a_time_in_order(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "busy")
    fake_llm.script(Script(text="first reply", delay=0.02, chunk_size=2), Script(text="second reply"))
    first = asyncio.ensure_future(post(client, agent_id, {"message": "one"}))
    await asyncio.sleep(0.05)  # "one" is running; "two" has to wait for it
    second = asyncio.ensure_future(post(client, agent_id, {"message": "two"}))
    (s1, b1), (s2, b2) = await asyncio.gather(first, second)
    assert (s1, s2) == (200, 200) and b1["response"] == "first reply" and b2["response"] == "second reply"
    # the second call saw the whole first turn: the runs did not interleave
    sent = fake_llm.requests[1].body["messages"]
    assert [m.get("content") for m in sent[1:]] == ["one", "first reply", "two"]
    assert len(kernel.services["runtime"].locks) == 0  # no lock left behind


async def test_sessions_survive_a_restart(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime()
    agent_id = await spawn(kernel, "durable")
    await post(client, agent_id, {"message": "persist me"})
    await kernel.stop()
    kernel2, client2 = await start_runtime()
    view = await (await client2.get(f"/api/agents/{agent_id}/session")).get_json()
    assert [m["content"] for m in view["messages"]][0] == "persist me"
    assert kernel2 is not kernel


async def test_bad_input(runtime_env: Any, spawn: Any, fake_llm: Any, monkeypatch: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "strict")
    status, body = await post(client, "not-a-uuid", {"message": "hi"})
    assert status == 400 and body["code"] == "invalid_agent_id" and body["request_id"]
    status, body = await post(client, str(uuid.uuid4()), {"message": "hi"})
    assert status == 404 and body["code"] == "agent_not_found"
    status, body = await post(client, agent_id, {})
    assert status == 400 and "message" in body["error"]
    status, body = await post(client, agent_id, {"message": "hi", "surprise": 1})
    assert status == 400
    status, body = await post(client, agent_id, {"message": 42})
    assert status == 400
    for empty in ("", "   \n", "/btw "):
        status, body = await post(client, agent_id, {"message": empty})
        assert status == 400 and body["code"] == "empty_message", empty
    status, body = await post(client, agent_id, {"message": "x" * 100_001})
    assert status == 413 and body["code"] == "message_too_large"
    status, body = await post(client, agent_id, {"message": "é" * 140_000})  # 280 KB in fewer characters
    assert status == 413
    status, body = await post(client, agent_id, {"message": "hi", "attachments": [{"file_id": "f"}]})
    assert status == 400 and body["code"] == "invalid_file_id"  # attachments: see test_attachments.py
    response = await client.get("/api/agents/nope/session")
    assert response.status_code == 400
    response = await client.get(f"/api/agents/{uuid.uuid4()}/session")
    assert response.status_code == 404
    assert fake_llm.requests == []  # nothing reached the provider
    await agents_api.registry(kernel).set_state(agent_id, "Suspended")
    status, body = await post(client, agent_id, {"message": "hi"})
    assert status == 409 and body["code"] == "agent_suspended"
    await agents_api.registry(kernel).set_state(agent_id, "Running")
    monkeypatch.delenv("OPENAI_API_KEY")
    status, body = await post(client, agent_id, {"message": "hi"})
    assert status == 412 and body["code"] == "provider_auth_missing" and "OPENAI_API_KEY" in body["error"]


async def test_unconfigured_and_unknown_providers_are_412(runtime_env: Any, spawn: Any) -> None:
    kernel, client = runtime_env
    default = await spawn(kernel, "dflt", 'name = "dflt"\n')  # provider "default" and no [default_model]
    status, body = await post(client, default, {"message": "hi"})
    assert status == 412 and body["code"] == "provider_not_configured"
    odd = await spawn(kernel, "odd", 'name = "odd"\n[model]\nprovider = "nosuchllm"\nmodel = "m"\n')
    status, body = await post(client, odd, {"message": "hi"})
    assert status == 412 and body["code"] == "provider_unknown"


async def test_provider_failures_and_max_iterations(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nmax_iterations = 2\n")
    agent_id = await spawn(kernel, "flaky")
    fake_llm.script(*[Script(fault="server_error") for _ in range(4)])
    status, body = await post(client, agent_id, {"message": "hi"})
    assert status == 502 and body["code"] == "upstream_error"
    fake_llm.script(Script(fault="auth"))
    status, body = await post(client, agent_id, {"message": "hi"})
    assert status == 502 and body["code"] == "provider_auth_failed"
    fake_llm.script(*[Script(tool_calls=[ToolCall("system_time", {}, id=f"t{i}")]) for i in range(2)])
    status, body = await post(client, agent_id, {"message": "loop"})
    assert status == 502 and body["code"] == "max_iterations_exceeded" and body["details"]["iterations"] == 2
    # the session stays consistent and the next turn works
    fake_llm.script(Script(text="back"))
    status, body = await post(client, agent_id, {"message": "again"})
    assert status == 200 and body["response"] == "back"
    roles = [m["role"] for m in fake_llm.requests[-1].body["messages"]]
    assert roles.count("tool") == 2 and roles[-1] == "user"


async def test_route_needs_auth_when_a_key_is_set(start_runtime: Any, spawn: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("LIBREFANG_API_KEY", "k" * 32)
    kernel, _ = await start_runtime()
    client = make_client(build_app(kernel))
    agent_id = await spawn(kernel, "guarded")
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "hi"},
                                 scope_base={"client": ("203.0.113.9", 4000)})
    assert response.status_code == 401


async def test_stop_cancels_a_running_turn_and_leaves_the_session_usable(runtime_env: Any, spawn: Any,
                                                                          fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "stoppable")
    response = await client.post(f"/api/agents/{agent_id}/stop")
    assert (await response.get_json()) == {"status": "ok", "message": "No active run", "stopped": False}
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t1")]),
                    Script(text="y" * 100, chunk_size=1, delay=0.05))  # 5 s of streaming
    running = asyncio.ensure_future(post(client, agent_id, {"message": "slow please"}))
    runtime = kernel.services["runtime"]
    for _ in range(200):
        if len(fake_llm.requests) == 2:
            break
        await asyncio.sleep(0.01)
    assert runtime.running.get(agent_id)
    response = await client.post(f"/api/agents/{agent_id}/stop")
    assert (await response.get_json())["message"] == "Run cancelled"
    status, body = await running
    assert status == 409 and body["code"] == "run_cancelled"
    assert runtime.running == {} and len(runtime.locks) == 0
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    # the committed tool turn stays; the half-streamed reply was never stored
    assert [m["role"] for m in view["messages"]] == ["User", "Assistant"]
    assert view["messages"][1]["tools"][0]["result"]
    fake_llm.script(Script(text="fresh"))
    status, body = await post(client, agent_id, {"message": "again"})
    assert status == 200 and body["response"] == "fresh"
    response = await client.post("/api/agents/nope/stop")
    assert response.status_code == 400
    response = await client.post(f"/api/agents/{agent_id}/sessions/{uuid.uuid4()}/stop")
    assert response.status_code == 404
    response = await client.post(f"/api/agents/{agent_id}/sessions/bad/stop")
    assert response.status_code == 400


async def test_manifest_base_url_and_key_variable(runtime_env: Any, spawn: Any, fake_llm: Any, monkeypatch: Any) -> None:
    kernel, client = runtime_env
    url = fake_llm.base_url("openai")
    own = await spawn(kernel, "own-endpoint", f'name = "own-endpoint"\n[model]\nprovider = "mylocal"\nmodel = "local-1"\n'
                                            f'base_url = "{url}"\napi_key_env = "MY_LOCAL_KEY"\n')
    monkeypatch.setenv("MY_LOCAL_KEY", "sk-local-abcdef123456")
    fake_llm.script(Script(text="served by my endpoint"))
    status, body = await post(client, own, {"message": "hi"})
    assert status == 200 and body["response"] == "served by my endpoint"
    assert (body["provider"], body["model"]) == ("mylocal", "local-1")
    assert fake_llm.requests[-1].headers["authorization"] == "Bearer sk-local-abcdef123456"
    keyed = await spawn(kernel, "keyed", 'name = "keyed"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n'
                                         'api_key_env = "NOT_SET_ANYWHERE"\n')
    status, body = await post(client, keyed, {"message": "hi"})
    assert status == 412 and body["code"] == "provider_auth_missing" and "NOT_SET_ANYWHERE" in body["error"]

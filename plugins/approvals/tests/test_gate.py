"""The gate in real turns against the fake provider server: a gated call waits for a decision made
over HTTP and the turn continues; reject and modify reach the model; the timeout fallback; a stopped
turn; direct tool invocation without an agent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.fakes.llm_server import Script, ToolCall


async def pending(client: Any, count: int = 1, within: float = 10.0) -> list[dict[str, Any]]:
    """Wait until ``count`` requests are pending and return them."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = await (await client.get("/api/approvals?status=pending")).get_json()
        if body["total"] >= count:
            return body["approvals"]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} pending approval(s) never appeared")


def tool_results(request: Any) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in request.body["messages"] if m["role"] == "tool"}


async def test_a_gated_call_waits_and_continues_after_an_http_approve(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "writer")
    events = kernel.bus.subscribe("approval.*")
    fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "notes.txt", "content": "hello"}, id="w1")]),
                    Script(text="written"))
    turn = asyncio.ensure_future(client.post(f"/api/agents/{agent}/message", json={"message": "write a note"}))
    [request] = await pending(client)
    target = kernel.home / "workspaces" / "agents" / "writer" / "notes.txt"
    assert not target.exists() and not turn.done()
    assert request["tool_name"] == "file_write" and request["agent_id"] == agent and request["tool_use_id"] == "w1"
    assert request["session_id"] and "notes.txt" in request["action_summary"] and request["source"] == "tool_call"
    await asyncio.sleep(0.2)
    assert not turn.done() and len(fake_llm.requests) == 1  # still waiting: the model was not called again

    approved = await client.post(f"/api/approvals/{request['id']}/approve", json={})
    assert approved.status_code == 200
    response = await asyncio.wait_for(turn, 10)
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["response"] == "written" and target.read_text() == "hello"
    assert not tool_results(fake_llm.requests[1])["w1"].startswith("Error")
    assert [e.topic for e in [events.queue.get_nowait(), events.queue.get_nowait()]] == \
        ["approval.requested", "approval.resolved"]
    assert (await client.post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 409


async def test_reject_and_modify_reach_the_model(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "writer")
    fake_llm.script(Script(tool_calls=[ToolCall("file_delete", {"path": "a.txt"}, id="d1")]),
                    Script(tool_calls=[ToolCall("file_write", {"path": "/etc/x", "content": "y"}, id="w2")]),
                    Script(text="ok, giving up"))
    turn = asyncio.ensure_future(client.post(f"/api/agents/{agent}/message", json={"message": "clean up"}))
    [first] = await pending(client)
    await client.post(f"/api/approvals/{first['id']}/reject")
    second = [a for a in await pending(client) if a["id"] != first["id"]]
    while not second:
        second = [a for a in await pending(client) if a["id"] != first["id"]]
        await asyncio.sleep(0.02)
    await client.post(f"/api/approvals/{second[0]['id']}/modify", json={"feedback": "write inside the workspace"})
    response = await asyncio.wait_for(turn, 10)
    assert response.status_code == 200
    rejected = tool_results(fake_llm.requests[1])["d1"]
    assert rejected.startswith("Error: the call to file_delete was refused: api:local rejected this call")
    modified = tool_results(fake_llm.requests[2])["w2"]
    assert "asks for a change: write inside the workspace" in modified and modified.startswith("Error")
    statuses = {a["id"]: a["status"] for a in (await (await client.get("/api/approvals")).get_json())["approvals"]}
    assert statuses == {first["id"]: "rejected", second[0]["id"]: "modified"}


@pytest.mark.parametrize("fallback", ["deny", "skip", "approve"])
async def test_timeout_fallback(start: Any, spawn: Any, fake_llm: Any, fallback: str) -> None:
    kernel, client = await start(f'[approval]\ntimeout_secs = 1\ntimeout_fallback = "{fallback}"\n')
    agent = await spawn(kernel, "slow")
    fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "late.txt", "content": "x"}, id="t1")]),
                    Script(text="done"))
    started = time.monotonic()
    response = await client.post(f"/api/agents/{agent}/message", json={"message": "write"})
    waited = time.monotonic() - started
    assert response.status_code == 200 and 1.0 <= waited < 8
    [request] = (await (await client.get("/api/approvals")).get_json())["approvals"]
    assert request["status"] == "timed_out" and request["decided_by"] == "system"
    result = tool_results(fake_llm.requests[1])["t1"]
    written = (kernel.home / "workspaces" / "agents" / "slow" / "late.txt").exists()
    if fallback == "approve":
        assert written and not result.startswith("Error")
    else:
        assert not written and "nobody approved this call within 1 s" in result
        assert ("skipped" in result) == (fallback == "skip")
    late = await client.post(f"/api/approvals/{request['id']}/approve", json={})
    assert late.status_code == 409


async def test_stopping_the_turn_marks_its_request_skipped(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "stoppable")
    fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "s.txt", "content": "x"}, id="s1")]))
    turn = asyncio.ensure_future(client.post(f"/api/agents/{agent}/message", json={"message": "write"}))
    [request] = await pending(client)
    stopped = await (await client.post(f"/api/agents/{agent}/stop")).get_json()
    assert stopped["stopped"] is True
    response = await asyncio.wait_for(turn, 10)
    assert response.status_code == 409
    after = await (await client.get(f"/api/approvals/{request['id']}")).get_json()
    assert after["status"] == "skipped"
    assert (await client.post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 409
    assert not (kernel.home / "workspaces" / "agents" / "stoppable" / "s.txt").exists()


async def test_direct_invoke_and_ungated_tools(start: Any, spawn: Any) -> None:
    kernel, client = await start('[tool_invoke]\nenabled = true\nallowlist = ["file_*"]\n'
                                 '[approval]\nrequire_approval = ["file_w*"]\nmax_pending_per_agent = 1\n')
    agent = await spawn(kernel, "direct")
    anonymous = await client.post("/api/tools/file_write/invoke", json={"path": "x.txt", "content": "x"})
    body = await anonymous.get_json()
    assert anonymous.status_code == 400 and "needs approval" in body["content"] and body["status"] == "denied"
    # file_delete is not gated by this config: it runs without a request.
    ungated = await client.post(f"/api/tools/file_delete/invoke?agent_id={agent}", json={"path": "nothing.txt"})
    assert "needs approval" not in (await ungated.get_json())["content"]
    assert (await (await client.get("/api/approvals/count")).get_json()) == {"pending": 0}
    # An agent at its pending limit is refused at once, with the reason, instead of queueing more.
    await client.post("/api/approvals", json={"agent_id": agent, "tool_name": "file_write"})
    full = await client.post(f"/api/tools/file_write/invoke?agent_id={agent}", json={"path": "y", "content": "y"})
    body = await full.get_json()
    assert full.status_code == 400 and "already has 1 pending approvals" in body["content"]


async def test_auto_approve_turns_the_gate_off(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start("[approval]\nauto_approve = true\n")
    agent = await spawn(kernel, "trusted")
    fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "t.txt", "content": "x"}, id="a1")]),
                    Script(text="done"))
    response = await client.post(f"/api/agents/{agent}/message", json={"message": "write"})
    assert response.status_code == 200
    assert (kernel.home / "workspaces" / "agents" / "trusted" / "t.txt").exists()
    assert (await (await client.get("/api/approvals")).get_json())["total"] == 0
    systems = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}
    assert systems["tool_approvals"]["active"] is False

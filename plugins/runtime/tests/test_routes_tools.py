"""``GET /api/tools``, ``GET /api/tools/{name}`` and the fail-closed ``POST /api/tools/{name}/invoke``."""

from __future__ import annotations

import uuid
from typing import Any


async def call(client: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await getattr(client, method)(path, **kwargs)
    return response.status_code, await response.get_json()


async def test_list_and_describe(runtime_env: Any) -> None:
    _, client = runtime_env
    status, body = await call(client, "get", "/api/tools")
    assert status == 200
    names = [t["name"] for t in body["tools"]]
    assert names == sorted(names) and {"file_read", "file_write", "file_list", "system_time"} <= set(names)
    assert body["total"] == len(names)
    status, tool = await call(client, "get", "/api/tools/file_read")
    assert status == 200 and tool["source"] == "builtin" and tool["input_schema"]["required"] == ["path"]
    status, body = await call(client, "get", "/api/tools/nope")
    assert status == 404 and body["code"] == "tool_not_found"


async def test_invoke_is_off_by_default(runtime_env: Any) -> None:
    _, client = runtime_env
    status, body = await call(client, "post", "/api/tools/system_time/invoke", json={})
    assert status == 403 and body["code"] == "tool_invoke_disabled"


async def test_invoke_with_allowlist_agent_context_and_audit(start_runtime: Any, spawn: Any) -> None:
    kernel, client = await start_runtime('[tool_invoke]\nenabled = true\nallowlist = ["file_*", "system_time"]\n')
    agent_id = await spawn(kernel, "handy")
    limited = await spawn(kernel, "limited", 'name = "limited"\nprofile = "minimal"\n[model]\nprovider = "openai"\n'
                                              'model = "fake-model"\n')
    status, body = await call(client, "post", "/api/tools/system_time/invoke", json={})
    assert status == 200 and body["is_error"] is False and "UTC" in body["content"] and body["status"] == "completed"
    status, body = await call(client, "post", f"/api/tools/file_write/invoke?agent_id={agent_id}",
                              json={"path": "note.txt", "content": "hi"})
    assert status == 200, body
    assert (kernel.home / "workspaces" / "agents" / "handy" / "note.txt").read_text() == "hi"
    # a tool error is a 400 carrying the result
    status, body = await call(client, "post", f"/api/tools/file_read/invoke?agent_id={agent_id}",
                              json={"path": "../../config.toml"})
    assert status == 400 and body["is_error"] is True and "'..'" in body["content"]
    # without an agent the workspace tools have nowhere to work
    status, body = await call(client, "post", "/api/tools/file_list/invoke", json={})
    assert status == 400 and "agent" in body["content"]
    # the agent's own tool permissions apply (minimal profile: read and list only)
    status, body = await call(client, "post", f"/api/tools/file_write/invoke?agent_id={limited}",
                              json={"path": "x", "content": "y"})
    assert status == 403 and body["code"] == "tool_not_permitted"
    # refusals
    status, body = await call(client, "post", "/api/tools/agent_send/invoke", json={})
    assert status == 403 and body["code"] == "tool_not_allowed"
    status, body = await call(client, "post", "/api/tools/file_nope/invoke", json={})
    assert status == 404
    status, body = await call(client, "post", "/api/tools/system_time/invoke?agent_id=bad", json={})
    assert status == 400
    status, body = await call(client, "post", f"/api/tools/system_time/invoke?agent_id={uuid.uuid4()}", json={})
    assert status == 404
    status, body = await call(client, "post", "/api/tools/system_time/invoke", json=[1, 2])
    assert status == 400
    status, body = await call(client, "post", "/api/tools/system_time/invoke?surprise=1", json={})
    assert status == 400
    # every call that ran is audited, with the agent or "rest-api:anonymous"
    entries, _ = await kernel.audit.recent(200)
    rows = sorted((e for e in entries if e["action"] == "ToolInvoke"), key=lambda e: e["seq"])
    assert {e["detail"] for e in rows} == {"system_time", "file_write", "file_read", "file_list"}
    assert [(e["target"], e["outcome"]) for e in rows] == [("rest-api:anonymous", "ok"), (agent_id, "ok"), (agent_id, "error"),
                                            ("rest-api:anonymous", "error")]

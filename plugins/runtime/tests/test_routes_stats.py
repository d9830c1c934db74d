"""``GET /api/agents/{id}/traces``, ``/metrics`` and ``/logs`` from stored turns, failed ones included."""

from __future__ import annotations

import uuid
from typing import Any

from tests.fakes.llm_server import Script, ToolCall


async def get(client: Any, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    return response.status_code, await response.get_json()


async def test_traces_metrics_and_logs(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "observed")
    status, empty = await get(client, f"/api/agents/{agent_id}/traces")
    assert status == 200 and empty["traces"] == []
    status, metrics = await get(client, f"/api/agents/{agent_id}/metrics")
    assert metrics["turns"] == 0 and metrics["last_turn_at"] is None
    fake_llm.script(
        Script(text="Looking.", tool_calls=[ToolCall("system_time", {}, id="t"),
                                            ToolCall("file_read", {"path": "missing.txt"}, id="r")],
               usage={"input": 10, "output": 2}),
        Script(text="done", usage={"input": 20, "output": 3}),
        Script(fault="auth"),
    )
    ok = await client.post(f"/api/agents/{agent_id}/message", json={"message": "work"})
    assert ok.status_code == 200
    failed = await client.post(f"/api/agents/{agent_id}/message", json={"message": "again"})
    assert failed.status_code == 502
    status, traces = await get(client, f"/api/agents/{agent_id}/traces")
    # the most recent turn failed before any tool ran
    assert status == 200 and traces["traces"] == []
    status, metrics = await get(client, f"/api/agents/{agent_id}/metrics")
    assert status == 200 and metrics["name"] == "observed"
    assert (metrics["turns"], metrics["errors"], metrics["tool_calls"], metrics["tool_errors"]) == (2, 1, 2, 1)
    assert (metrics["input_tokens"], metrics["output_tokens"]) == (30, 5)
    assert metrics["avg_response_ms"] > 0 and metrics["last_turn_at"].endswith("Z")
    status, logs = await get(client, f"/api/agents/{agent_id}/logs")
    assert status == 200 and logs["total"] == 2
    newest, oldest = logs["entries"]
    assert (newest["outcome"], newest["error"]) == ("error", "auth_failed")
    assert (oldest["outcome"], oldest["iterations"], oldest["tool_calls"]) == ("ok", 2, 2)
    status, only_errors = await get(client, f"/api/agents/{agent_id}/logs?level=error&n=5")
    assert only_errors["total"] == 1 and len(only_errors["entries"]) == 1
    status, page = await get(client, f"/api/agents/{agent_id}/logs?n=1&offset=1")
    assert page["entries"][0]["outcome"] == "ok"
    # traces of a turn that used tools
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t2")]), Script(text="ok"))
    await client.post(f"/api/agents/{agent_id}/message", json={"message": "time"})
    status, traces = await get(client, f"/api/agents/{agent_id}/traces")
    assert [t["tool_name"] for t in traces["traces"]] == ["system_time"] and traces["session_id"]
    # bad input
    assert (await get(client, f"/api/agents/{agent_id}/logs?level=warn"))[0] == 400
    assert (await get(client, f"/api/agents/{agent_id}/logs?n=5000"))[0] == 400
    for path in ("traces", "metrics", "logs"):
        assert (await get(client, f"/api/agents/bad/{path}"))[0] == 400
        assert (await get(client, f"/api/agents/{uuid.uuid4()}/{path}"))[0] == 404

"""``POST /api/agents/{id}/message/stream``: the SSE event sequence (in-process), keep-alive comments,
refusals before the stream starts, errors inside it, and a real client against a live server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from librefang.testing import start_live_server, write_config

from tests.fakes.llm_server import FakeLLMServer, Script, ToolCall

from .conftest import AGENT, TEST_KEY, config_for


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs; comments come back as ("comment", text)."""
    out: list[tuple[str, Any]] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        if frame.startswith(":"):
            out.append(("comment", frame[1:].strip()))
            continue
        fields = dict(line.split(": ", 1) for line in frame.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def stream(client: Any, agent_id: str, body: dict[str, Any]) -> tuple[int, str, str]:
    response = await client.post(f"/api/agents/{agent_id}/message/stream", json=body)
    return response.status_code, response.headers.get("content-type", ""), await response.get_data(as_text=True)


async def test_text_stream(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "streamer")
    fake_llm.script(Script(text="Hello world!", chunk_size=5, usage={"input": 9, "output": 3}))
    status, content_type, text = await stream(client, agent_id, {"message": "hi"})
    assert status == 200 and content_type.startswith("text/event-stream")
    events = parse_sse(text)
    chunks = [d["content"] for e, d in events if e == "chunk"]
    assert chunks == ["Hello", " worl", "d!"]
    assert all(d["done"] is False for e, d in events if e == "chunk")
    names = [e for e, _ in events]
    assert names[-3:] == ["done", "phase", "result"]
    assert events[-3][1] == {"done": True, "usage": {"input_tokens": 9, "output_tokens": 3}}
    assert events[-2][1] == {"phase": "response_complete", "detail": None}
    result = events[-1][1]
    assert result["response"] == "Hello world!" and result["iterations"] == 1
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["session_id"] == result["session_id"] and view["message_count"] == 2


async def test_tool_stream_emits_tool_use_tool_result_and_done_per_call(runtime_env: Any, spawn: Any,
                                                                       fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "tooler")
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {}, id="t1")]), Script(text="It is now."))
    status, _, text = await stream(client, agent_id, {"message": "time?"})
    events = parse_sse(text)
    names = [e for e, _ in events]
    assert names.index("tool_use") < names.index("tool_result") < names.index("phase")
    assert dict(events)["tool_use"] == {"tool": "system_time", "id": "t1"}
    assert dict(events)["tool_result"] == {"tool": "system_time", "id": "t1", "input": {}}
    assert names.count("done") == 2  # one per LLM call, as the reference does
    assert [d["phase"] for e, d in events if e == "phase"] == ["tool_use", "response_complete"]
    assert events[-1][1]["response"] == "It is now."


async def test_keep_alive_comments_while_the_model_is_slow(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nsse_keepalive_secs = 0.05\n")
    agent_id = await spawn(kernel, "patient")
    fake_llm.script(Script(text="slow", chunk_size=1, delay=0.08))
    _, _, text = await stream(client, agent_id, {"message": "take your time"})
    events = parse_sse(text)
    assert ("comment", "keep-alive") in events
    assert "".join(d["content"] for e, d in events if e == "chunk") == "slow"


async def test_refusals_come_before_the_stream_and_failures_inside_it(runtime_env: Any, spawn: Any,
                                                                       fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "refused")
    status, content_type, text = await stream(client, "bad-id", {"message": "hi"})
    assert status == 400 and content_type.startswith("application/json")
    status, _, _ = await stream(client, str(uuid.uuid4()), {"message": "hi"})
    assert status == 404
    status, _, text = await stream(client, agent_id, {"message": "x" * 100_001})
    assert status == 413 and json.loads(text)["code"] == "message_too_large"
    status, _, _ = await stream(client, agent_id, {"nope": 1})
    assert status == 400
    fake_llm.script(Script(fault="auth"))
    status, _, text = await stream(client, agent_id, {"message": "hi"})
    assert status == 200
    assert parse_sse(text)[-1] == ("error", {"error": parse_sse(text)[-1][1]["error"], "code": "provider_auth_failed"})


async def test_live_server_stream_with_a_real_client(librefang_home: Any, monkeypatch: Any) -> None:
    fake = FakeLLMServer().start_in_thread()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers,agents,runtime")
    write_config(librefang_home, config_for(fake))
    server = start_live_server(librefang_home)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            spawned = await http.post("/api/agents", json={"manifest_toml": AGENT.format(name="live")})
            assert spawned.status_code == 201, spawned.text
            agent_id = spawned.json()["agent_id"]
            fake.script(Script(text="streamed over a socket", chunk_size=4, delay=0.01))
            frames: list[str] = []
            async with http.stream("POST", f"/api/agents/{agent_id}/message/stream",
                                   json={"message": "hello"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    frames.append(line)
        text = "\n".join(frames)
        events = parse_sse(text.replace("\n\n\n", "\n\n"))
        assert "".join(d["content"] for e, d in events if e == "chunk") == "streamed over a socket"
        assert events[-1][0] == "result" and events[-1][1]["response"] == "streamed over a socket"
    finally:
        server.stop()
        fake.stop_thread()


async def test_live_client_disconnect_cancels_the_turn(librefang_home: Any, monkeypatch: Any) -> None:
    import asyncio

    fake = FakeLLMServer().start_in_thread()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers,agents,runtime")
    write_config(librefang_home, config_for(fake))
    server = start_live_server(librefang_home)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            spawned = await http.post("/api/agents", json={"manifest_toml": AGENT.format(name="leaver")})
            agent_id = spawned.json()["agent_id"]
            # 40 chunks 0.1 s apart: the whole reply would take 4 s
            fake.script(Script(text="x" * 40, chunk_size=1, delay=0.1))
            async with http.stream("POST", f"/api/agents/{agent_id}/message/stream",
                                   json={"message": "long answer please"}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: chunk"):
                        break  # the client goes away mid-stream
            runtime = server.kernel.services["runtime"]
            for _ in range(100):
                if len(runtime.locks) == 0:
                    break
                await asyncio.sleep(0.02)
            assert len(runtime.locks) == 0  # the run ended long before the reply would have
            view = (await http.get(f"/api/agents/{agent_id}/session")).json()
            assert [m["role"] for m in view["messages"]] == ["User"]  # no half reply stored
            # the session is usable at once
            fake.script(Script(text="short"))
            reply = await http.post(f"/api/agents/{agent_id}/message", json={"message": "short then"})
            assert reply.status_code == 200 and reply.json()["response"] == "short"
            # a plain (non-streaming) request whose client goes away cancels its turn too
            fake.script(Script(text="z" * 40, chunk_size=1, delay=0.1))
            with pytest.raises(httpx.TimeoutException):
                await http.post(f"/api/agents/{agent_id}/message", json={"message": "slow"}, timeout=0.5)
            for _ in range(100):
                if not runtime.running:
                    break
                await asyncio.sleep(0.02)
            assert runtime.running == {} and len(runtime.locks) == 0
    finally:
        server.stop()
        fake.stop_thread()

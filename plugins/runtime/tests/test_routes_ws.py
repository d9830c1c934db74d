"""``GET /api/agents/{id}/ws``: the WebSocket chat protocol in-process (frames, tools, commands,
limits, bad input)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from quart.testing import WebsocketResponseError

from tests.fakes.llm_server import Script, ToolCall


async def frames_until(ws: Any, *terminal: str, limit: int = 200) -> list[dict[str, Any]]:
    """Frames up to and including the first whose type is in ``terminal``."""
    out = []
    for _ in range(limit):
        frame = json.loads(await asyncio.wait_for(ws.receive(), timeout=10))
        out.append(frame)
        if frame["type"] in terminal:
            return out
    raise AssertionError(f"no {terminal} frame in {out}")


async def test_chat_with_tools_and_message_id_echo(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "socket")
    fake_llm.script(Script(text="Checking.", tool_calls=[ToolCall("system_time", {}, id="t1")]),
                    Script(text="It is " + "very " * 60 + "late.", chunk_size=5, usage={"input": 8, "output": 4}))
    async with client.websocket(f"/api/agents/{agent_id}/ws") as ws:
        connected = json.loads(await ws.receive())
        assert connected == {"type": "connected", "agent_id": agent_id}
        assert json.loads(await ws.receive())["type"] == "agents_updated"
        await ws.send(json.dumps({"type": "message", "content": "time?", "message_id": "m-1"}))
        frames = await frames_until(ws, "response", "error")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "typing" and frames[0]["state"] == "start"
    assert kinds.index("tool_start") < kinds.index("tool_end") < kinds.index("tool_result") < kinds.index("response")
    tool_result = next(f for f in frames if f["type"] == "tool_result")
    assert tool_result["tool"] == "system_time" and "UTC" in tool_result["result"] and tool_result["is_error"] is False
    text = "".join(f["content"] for f in frames if f["type"] == "text_delta")
    assert text == "Checking." + "It is " + "very " * 60 + "late."
    # deltas are debounced: far fewer frames than the 5-character chunks the provider sent
    assert sum(k == "text_delta" for k in kinds) < len(text) // 5 // 2
    assert {"type": "typing", "state": "stop"} in frames
    response = frames[-1]
    assert response["type"] == "response" and response["message_id"] == "m-1"
    assert response["content"] == "It is " + "very " * 60 + "late." and response["iterations"] == 2
    assert response["input_tokens"] >= 8


async def test_plain_text_ping_commands_and_errors(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "cmds")
    fake_llm.script(Script(text="plain reply"), Script(text="NO_REPLY"))
    async with client.websocket(f"/api/agents/{agent_id}/ws") as ws:
        await ws.receive()  # connected
        await ws.receive()  # agents_updated
        await ws.send("just text, not JSON")
        frames = await frames_until(ws, "response")
        assert frames[-1]["content"] == "plain reply" and "message_id" not in frames[-1]
        await ws.send(json.dumps({"type": "message", "content": "shh", "message_id": 7}))
        assert (await frames_until(ws, "silent_complete"))[-1] == {"type": "silent_complete", "message_id": "7"}
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.receive()) == {"type": "pong"}
        await ws.send(json.dumps({"type": "command", "command": "usage"}))
        usage = json.loads(await ws.receive())
        assert usage["type"] == "command_result" and usage["turns"] == 2 and usage["input_tokens"] > 0
        await ws.send(json.dumps({"type": "command", "command": "model"}))
        model = json.loads(await ws.receive())
        assert (model["provider"], model["model"]) == ("openai", "fake-model")
        await ws.send(json.dumps({"type": "command", "command": "stop"}))
        assert json.loads(await ws.receive())["message"] == "No active run to cancel."
        await ws.send(json.dumps({"type": "command", "command": "new"}))
        new = json.loads(await ws.receive())
        assert new["command"] == "new" and uuid.UUID(new["session_id"])
        await ws.send(json.dumps({"type": "command", "command": "frobnicate"}))
        assert json.loads(await ws.receive())["code"] == "unknown_command"
        await ws.send(json.dumps({"type": "message", "content": "  "}))
        assert json.loads(await ws.receive())["code"] == "invalid_message"
        await ws.send(json.dumps({"type": "dance"}))
        assert json.loads(await ws.receive())["code"] == "invalid_frame"
        await ws.send(json.dumps({"type": "message", "content": "x" * 100_001, "message_id": "big"}))
        error = (await frames_until(ws, "error"))[-1]
        assert error["code"] == "message_too_large" and error["message_id"] == "big"
    # the new session became the canonical one, and it is empty
    view = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert view["session_id"] == new["session_id"] and view["messages"] == []


async def test_stop_command_cancels_the_running_turn(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    agent_id = await spawn(kernel, "halt")
    fake_llm.script(Script(text="z" * 200, chunk_size=1, delay=0.05))  # 10 s if not stopped
    async with client.websocket(f"/api/agents/{agent_id}/ws") as ws:
        await ws.receive()  # connected
        await ws.receive()  # agents_updated
        await ws.send(json.dumps({"type": "message", "content": "go on and on", "message_id": "long"}))
        await frames_until(ws, "text_delta")
        await ws.send(json.dumps({"type": "command", "command": "stop"}))
        frames = await frames_until(ws, "command_result")
        rest = [] if any(f["type"] == "error" for f in frames) else await frames_until(ws, "error")
        error = next(f for f in frames + rest if f["type"] == "error")
        assert error["code"] == "run_cancelled" and error["message_id"] == "long"
        assert next(f for f in frames if f["type"] == "command_result")["message"] == "Run cancelled."
    assert kernel.services["runtime"].running == {}


async def test_rate_limit_connection_limit_and_bad_agents(start_runtime: Any, spawn: Any) -> None:
    kernel, client = await start_runtime("[runtime]\nws_messages_per_minute = 2\nws_max_connections_per_ip = 1\n")
    agent_id = await spawn(kernel, "limited")
    async with client.websocket(f"/api/agents/{agent_id}/ws") as ws:
        await ws.receive()  # connected
        await ws.receive()  # agents_updated
        for _ in range(2):
            await ws.send(json.dumps({"type": "command", "command": "model"}))
            assert json.loads(await ws.receive())["type"] == "command_result"
        await ws.send(json.dumps({"type": "command", "command": "model"}))
        refused = json.loads(await ws.receive())
        assert refused["code"] == "rate_limited" and "Max 2 messages per minute" in refused["content"]
        await ws.send(json.dumps({"type": "ping"}))  # pings are never limited
        assert json.loads(await ws.receive()) == {"type": "pong"}
        with pytest.raises(WebsocketResponseError) as second:
            async with client.websocket(f"/api/agents/{agent_id}/ws") as ws2:
                await ws2.receive()
        assert second.value.response.status_code == 429
    assert kernel.services["runtime"].ws_connections == {}
    for bad, status in (("not-a-uuid", 400), (str(uuid.uuid4()), 404)):
        with pytest.raises(WebsocketResponseError) as info:
            async with client.websocket(f"/api/agents/{bad}/ws") as ws:
                await ws.receive()
        assert info.value.response.status_code == status


async def test_live_server_with_a_real_websocket_client_and_bearer_subprotocol(librefang_home: Any,
                                                                             monkeypatch: Any) -> None:
    import httpx
    import websockets
    from librefang.testing import start_live_server, write_config

    from tests.fakes.llm_server import FakeLLMServer

    from .conftest import AGENT, TEST_KEY, config_for

    key = "lf-ws-key-0123456789abcdef0123456789"
    fake = FakeLLMServer().start_in_thread()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIBREFANG_API_KEY", key)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers,agents,runtime")
    write_config(librefang_home, config_for(fake, "[runtime]\nws_max_connections_per_ip = 1\n"))
    server = start_live_server(librefang_home)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
            created = await http.post("/api/agents", json={"manifest_toml": AGENT.format(name="wslive")})
            agent_id = created.json()["agent_id"]
        url = server.url.replace("http://", "ws://") + f"/api/agents/{agent_id}/ws"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 401
        fake.script(Script(text="over a real socket", chunk_size=3, delay=0.01))
        async with websockets.connect(url, subprotocols=[f"bearer.{key}"]) as ws:
            assert ws.subprotocol == f"bearer.{key}"
            assert json.loads(await ws.recv())["type"] == "connected"
            # a second connection from the same client is over the limit: refused in-band, then closed
            async with websockets.connect(url, subprotocols=[f"bearer.{key}"]) as extra:
                refusal = json.loads(await asyncio.wait_for(extra.recv(), timeout=10))
                assert refusal["code"] == "too_many_connections"
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(extra.recv(), timeout=10)
            await ws.send(json.dumps({"type": "message", "content": "hello", "message_id": "live-1"}))
            frames = []
            while not frames or frames[-1]["type"] not in ("response", "error"):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=10)))
        assert frames[-1]["type"] == "response" and frames[-1]["content"] == "over a real socket"
        assert frames[-1]["message_id"] == "live-1"
        assert "".join(f["content"] for f in frames if f["type"] == "text_delta") == "over a real socket"
    finally:
        server.stop()
        fake.stop_thread()

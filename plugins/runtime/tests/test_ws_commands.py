"""WebSocket: the commands of brief §3.5 (reboot, context, verbose, queue, budget, peers, a2a),
``agents_updated`` frames, ``context_pressure`` and attachments — over a live server with a real
WebSocket client, and the budget plugin's report in-process."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from librefang.testing import start_live_server, write_config

from tests.fakes.llm_server import FakeLLMServer, Script, ToolCall

from .conftest import AGENT, TEST_KEY, config_for
from .test_attachments import png

KEY = "lf-ws-cmd-key-0123456789abcdef012345"
SMALL_WINDOW = """name = "{name}"
[model]
provider = "openai"
model = "fake-model"
context_window = 1000
"""


async def next_frame(ws: Any, kind: str, limit: int = 200) -> dict[str, Any]:
    """The next frame of type ``kind`` (others are skipped)."""
    for _ in range(limit):
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def frames_until(ws: Any, *terminal: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] not in terminal:
        out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=10)))
    return out


async def command(ws: Any, name: str, args: str = "") -> dict[str, Any]:
    await ws.send(json.dumps({"type": "command", "command": name, "args": args}))
    frames = await frames_until(ws, "command_result", "error")
    return frames[-1]


@pytest.fixture
def live(librefang_home: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    fake = FakeLLMServer().start_in_thread()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIBREFANG_API_KEY", KEY)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "providers,agents,runtime")
    write_config(librefang_home, config_for(fake, "[runtime]\nws_messages_per_minute = 100\n"))
    server = start_live_server(librefang_home)
    yield server, fake
    server.stop()
    fake.stop_thread()


async def test_commands_agents_updated_pressure_and_attachments_over_a_live_socket(live: Any) -> None:
    server, fake = live
    http = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"})
    try:
        created = await http.post("/api/agents", json={"manifest_toml": SMALL_WINDOW.format(name="cmd")})
        agent_id = created.json()["agent_id"]
        url = server.url.replace("http://", "ws://") + f"/api/agents/{agent_id}/ws"
        import websockets

        async with websockets.connect(url, subprotocols=[f"bearer.{KEY}"]) as ws:
            assert json.loads(await ws.recv()) == {"type": "connected", "agent_id": agent_id}
            first = json.loads(await ws.recv())
            assert first["type"] == "agents_updated" and first["total"] == 1
            assert first["agents"] == [{"id": agent_id, "name": "cmd", "state": "Running", "mode": "full",
                                        "model_provider": "openai", "model_name": "fake-model"}]

            # registry changes: a burst of spawns gives one debounced frame holding all of them
            for name in ("peer-a", "peer-b", "peer-c"):
                response = await http.post("/api/agents", json={"manifest_toml": AGENT.format(name=name)})
                assert response.status_code == 201
            updates = [await next_frame(ws, "agents_updated")]
            while updates[-1]["total"] < 4:  # a slow machine may split the burst over debounce windows
                updates.append(await next_frame(ws, "agents_updated"))
            assert len(updates) <= 3
            updated = updates[-1]
            assert sorted(a["name"] for a in updated["agents"]) == ["cmd", "peer-a", "peer-b", "peer-c"]

            peers = await command(ws, "peers")
            assert peers["total"] == 3 and sorted(a["name"] for a in peers["agents"]) == ["peer-a", "peer-b", "peer-c"]
            assert "peer-a — Running" in peers["message"]
            a2a = await command(ws, "a2a")
            assert a2a["type"] == "error" and a2a["code"] == "not_available"
            budget = await command(ws, "budget")  # the budget plugin is not loaded here
            assert budget["type"] == "error" and budget["code"] == "not_available"
            assert (await command(ws, "queue"))["message"] == "Agent is idle."

            # verbose off: tool frames without detail; the response carries context pressure
            assert (await command(ws, "verbose", "off"))["level"] == "off"
            fake.script(Script(text="", tool_calls=[ToolCall("system_time", {}, id="c1")]),
                        Script(text="done", usage={"input": 900, "output": 5}))
            await ws.send(json.dumps({"type": "message", "content": "time?", "message_id": "v-off"}))
            frames = await frames_until(ws, "response", "error")
            kinds = [f["type"] for f in frames]
            assert "tool_start" in kinds and "tool_end" not in kinds
            result = next(f for f in frames if f["type"] == "tool_result")
            assert "result" not in result and result["is_error"] is False
            assert frames[-1]["type"] == "response" and frames[-1]["context_pressure"] == "critical"  # 900 of 1000

            assert (await command(ws, "verbose", "on"))["level"] == "on"
            fake.script(Script(text="", tool_calls=[ToolCall("system_time", {"pad": "p" * 300}, id="c2")],
                               usage={"input": 60, "output": 1}),
                        Script(text="ok", usage={"input": 40, "output": 1}))
            await ws.send(json.dumps({"type": "message", "content": "again"}))
            frames = await frames_until(ws, "response", "error")
            tool_end = next(f for f in frames if f["type"] == "tool_end")
            assert len(tool_end["input"]) == 100
            assert next(f for f in frames if f["type"] == "tool_result")["result"]
            assert frames[-1]["context_pressure"] == "low"
            assert (await command(ws, "verbose"))["level"] == "full"  # no level: the next one
            bad = await command(ws, "verbose", "loud")
            assert bad["type"] == "error" and bad["code"] == "invalid_command_args"

            context = await command(ws, "context")
            assert context["context_window"] == 1000 and context["session_messages"] >= 6
            assert context["last_input_tokens"] == 50  # 100 tokens over the turn's 2 calls
            assert context["estimated_tokens"] > 0 and context["context_pressure"] in ("low", "medium", "high",
                                                                                       "critical")

            # attachments in the message frame
            image = png()
            uploaded = await http.post(f"/api/agents/{agent_id}/upload", content=image,
                                       headers={"Content-Type": "image/png", "X-Filename": "dot.png"})
            file_id = uploaded.json()["file_id"]
            fake.script(Script(text="a dot"))
            await ws.send(json.dumps({"type": "message", "content": "", "attachments": [{"file_id": file_id}],
                                      "message_id": "img"}))
            frames = await frames_until(ws, "response", "error")
            assert frames[-1]["type"] == "response" and frames[-1]["content"] == "a dot"
            sent = fake.requests[-1].body["messages"][-1]["content"]
            assert {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(image).decode()}} in sent
            await ws.send(json.dumps({"type": "message", "content": "x", "attachments": [{"nope": 1}]}))
            assert (await next_frame(ws, "error"))["code"] == "invalid_message"
            await ws.send(json.dumps({"type": "message", "content": "x", "attachments": [{"file_id": "bad"}],
                                      "message_id": "bad-att"}))
            refused = await next_frame(ws, "error")
            assert refused["code"] == "invalid_file_id" and refused["message_id"] == "bad-att"

            # reboot: a fresh session, the old one gone
            reboot = await command(ws, "reboot")
            assert reboot["message"] == "Session rebooted. Context cleared." and reboot["session_id"]
            view = (await http.get(f"/api/agents/{agent_id}/session")).json()
            assert view["session_id"] == reboot["session_id"] and view["messages"] == []
            assert (await command(ws, "context"))["session_messages"] == 0
    finally:
        await http.aclose()


async def test_queue_while_running_and_budget_with_the_plugin(start_runtime: Any, spawn: Any, fake_llm: Any) -> None:
    import librefang_budget.plugin as budget_plugin

    kernel, client = await start_runtime("[budget]\nmax_daily_usd = 5.0\n", plugins={"budget": budget_plugin})
    agent_id = await spawn(kernel, "spender")
    fake_llm.script(Script(text="z" * 100, chunk_size=1, delay=0.05))
    async with client.websocket(f"/api/agents/{agent_id}/ws") as ws:
        assert json.loads(await ws.receive())["type"] == "connected"
        assert json.loads(await ws.receive())["type"] == "agents_updated"
        await ws.send(json.dumps({"type": "command", "command": "budget"}))
        budget = json.loads(await ws.receive())
        assert budget["type"] == "command_result" and budget["agent"]["agent_id"] == agent_id
        assert budget["global_budget"]["daily_limit"] == 5.0
        assert "All agents — Hourly: $0.0000 / unlimited | Daily: $0.0000 / $5.00" in budget["message"]
        await ws.send(json.dumps({"type": "message", "content": "long one"}))
        while json.loads(await ws.receive())["type"] != "text_delta":
            pass
        await ws.send(json.dumps({"type": "command", "command": "queue"}))
        while (frame := json.loads(await ws.receive()))["type"] != "command_result":
            pass
        assert frame["running"] == 1 and frame["pending"] == 1 and "processing" in frame["message"]
        await ws.send(json.dumps({"type": "command", "command": "stop"}))


async def agents_update_with(ws: Any, agent_id: str, provider: str, model: str) -> dict[str, Any]:
    """The next ``agents_updated`` frame showing the agent on ``provider``/``model`` (older ones skipped)."""
    for _ in range(20):
        frame = await next_frame(ws, "agents_updated")
        mine = next(a for a in frame["agents"] if a["id"] == agent_id)
        if (mine["model_provider"], mine["model_name"]) == (provider, model):
            return frame
    raise AssertionError(f"no agents_updated with {provider}/{model}")


async def test_model_command_switches_the_model_like_the_http_route(live: Any) -> None:
    server, fake = live
    http = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"})
    try:
        created = await http.post("/api/agents", json={"manifest_toml": AGENT.format(name="switcher")})
        agent_id = created.json()["agent_id"]

        async def model_of() -> tuple[str, str]:
            detail = (await http.get(f"/api/agents/{agent_id}")).json()
            return detail["model"]["provider"], detail["model"]["model"]

        url = server.url.replace("http://", "ws://") + f"/api/agents/{agent_id}/ws"
        import websockets

        async with websockets.connect(url, subprotocols=[f"bearer.{KEY}"]) as ws:
            await next_frame(ws, "agents_updated")
            current = await command(ws, "model")
            assert current == {"type": "command_result", "command": "model", "message": "Current model: openai/fake-model",
                               "provider": "openai", "model": "fake-model"}

            # a bare catalog id: switched (provider from the catalog), then agents_updated shows it
            switched = await command(ws, "model", "gpt-4o-mini")
            assert switched == {"type": "command_result", "command": "model",
                                "message": "Model switched to openai/gpt-4o-mini", "provider": "openai",
                                "model": "gpt-4o-mini"}
            await agents_update_with(ws, agent_id, "openai", "gpt-4o-mini")
            assert await model_of() == ("openai", "gpt-4o-mini")
            fake.script(Script(text="served"))  # the next turn goes to the new model
            await ws.send(json.dumps({"type": "message", "content": "hi"}))
            assert (await next_frame(ws, "response"))["content"] == "served"
            assert fake.requests[-1].body["model"] == "gpt-4o-mini"

            # provider/model of a listed model (openai/gpt-4o-mini is also an OpenRouter id: the
            # provider named first wins); an alias resolves to its canonical id and provider
            assert (await command(ws, "model", " openai/gpt-4o "))["model"] == "gpt-4o"
            assert await model_of() == ("openai", "gpt-4o")
            alias = await command(ws, "model", "sonnet")
            assert (alias["provider"], alias["model"]) == ("anthropic", "claude-sonnet-4-5-20250929")
            # a model the catalog does not list, under an explicit known provider (as the HTTP route allows)
            local = await command(ws, "model", "openai/my-finetune:v2")
            assert (local["provider"], local["model"]) == ("openai", "my-finetune:v2")
            await agents_update_with(ws, agent_id, "openai", "my-finetune:v2")

            # refused: unknown names (the error names them), and the HTTP route's field limits
            for bad in ("no-such-model", "nosuchprovider/gpt-4o"):
                refused = await command(ws, "model", bad)
                assert refused["type"] == "error" and refused["code"] == "model_not_found"
                assert repr(bad) in refused["content"]
            too_long = await command(ws, "model", "openai/" + "m" * 201)
            assert too_long["type"] == "error" and too_long["code"] == "invalid_body"
            assert "body.model" in too_long["content"]
            assert await model_of() == ("openai", "my-finetune:v2")  # nothing refused was applied
            http_too_long = await http.put(f"/api/agents/{agent_id}/model", json={"model": "m" * 201})
            assert http_too_long.status_code == 400 and http_too_long.json()["code"] == too_long["code"]


        # each switch was audited as the HTTP route's is; the refused ones were not
        audit = (await http.get("/api/audit/recent", params={"n": 100})).json()
        changes = [e for e in audit["items"] if e["action"] == "AgentConfigChange" and e["target"] == agent_id]
        assert len(changes) == 4 and all("model" in e["detail"] for e in changes), changes
    finally:
        await http.aclose()

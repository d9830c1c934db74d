"""Agent modules (``register_agent_modules``): a plugin-served scheme answers instead of the LLM loop,
through the ordinary turn path (session, usage, events, JSON and SSE responses); unserved schemes,
failing handlers and bad registrations; ``register_tools`` receiving the kernel."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from librefang import hookimpl
from librefang_runtime.api import ModuleError, ModuleReply, ModuleRequest, Tool
from librefang_runtime.models import usage as usage_table
from librefang_runtime.modules import ModuleRegistry

PY_AGENT = 'name = "{name}"\nmodule = "python:{target}"\n'


class ModulePlugin:
    """Serves ``python:`` modules with a few scripted behaviours, and adds a tool built from the kernel."""

    def __init__(self) -> None:
        self.requests: list[ModuleRequest] = []
        self.turns: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    @hookimpl
    def register_agent_modules(self, register: Any) -> None:
        register("python", self.handle)

    @hookimpl
    def register_tools(self, register: Any, kernel: Any) -> None:
        # A tool whose description comes from the kernel's configuration, read at registration time.
        limit = kernel.config.section("runtime").max_iterations
        register(Tool("iteration_limit", f"Tells the limit ({limit}).", lambda data, ctx: str(limit)))

    @hookimpl
    def after_turn(self, kernel: Any, turn: dict[str, Any]) -> None:
        self.turns.append(turn)

    async def handle(self, request: ModuleRequest) -> Any:
        self.requests.append(request)
        self.started.set()
        if request.target == "echo":
            earlier = [m.content if isinstance(m.content, str) else m.blocks()[0].text for m in request.history]
            return f"echo({len(earlier)} earlier): {request.message}"
        if request.target == "quiet":
            return ModuleReply("", silent=True)
        if request.target == "refuse":
            raise ModuleError("the module refuses", status=422, code="module_refused", details={"why": "test"})
        if request.target == "slow":
            await self.release.wait()
            return "finally"
        raise RuntimeError("boom")


async def post(client: Any, agent_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json=body)
    return response.status_code, await response.get_json()


async def test_a_served_module_answers_through_the_ordinary_turn_path(start_runtime: Any, spawn: Any,
                                                                      fake_llm: Any) -> None:
    plugin = ModulePlugin()
    kernel, client = await start_runtime(plugins={"modules": plugin})
    agent_id = await spawn(kernel, "py-echo", PY_AGENT.format(name="py-echo", target="echo"))
    with kernel.bus.subscribe("runtime.*") as events:
        status, body = await post(client, agent_id, {"message": "hello"})
        event = events.queue.get_nowait()
    assert status == 200, body
    assert body["response"] == "echo(0 earlier): hello"
    assert (body["input_tokens"], body["output_tokens"], body["iterations"]) == (0, 0, 1)
    assert (body["provider"], body["model"]) == ("python", "python:echo")
    assert fake_llm.requests == []  # no model was called
    request = plugin.requests[0]
    assert (request.agent_id, request.agent_name, request.scheme, request.target) == (agent_id, "py-echo",
                                                                                      "python", "echo")
    assert request.session_id == body["session_id"] and request.context.workspace is not None
    assert request.kernel is kernel
    assert event.data["agent_id"] == agent_id and event.data["outcome"] == "ok" and event.data["input_tokens"] == 0
    assert plugin.turns[0]["response"] == "echo(0 earlier): hello"
    # The second message sees the first exchange as history; the session holds both.
    status, body = await post(client, agent_id, {"message": "again"})
    assert body["response"] == "echo(2 earlier): again"
    session = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    assert [m["content"] for m in session["messages"]] == ["hello", "echo(0 earlier): hello", "again",
                                                           "echo(2 earlier): again"]
    async with kernel.db.begin() as conn:
        rows = (await conn.execute(sa.select(usage_table))).all()
    assert [(r.provider, r.model, r.input_tokens, r.output_tokens, r.outcome) for r in rows] == [
        ("python", "python:echo", 0, 0, "ok")] * 2
    # The SSE stream carries the reply as a chunk, then done and the result.
    response = await client.post(f"/api/agents/{agent_id}/message/stream", json={"message": "streamed"})
    text = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert '"content": "echo(4 earlier): streamed"' in text and "event: done" in text and "event: result" in text
    # The kernel reached register_tools.
    from librefang_runtime.api import runtime

    assert runtime(kernel).tools.get("iteration_limit").description == "Tells the limit (50)."


async def test_silent_failing_and_unserved_modules(start_runtime: Any, spawn: Any) -> None:
    plugin = ModulePlugin()
    kernel, client = await start_runtime(plugins={"modules": plugin})
    quiet = await spawn(kernel, "quiet", PY_AGENT.format(name="quiet", target="quiet"))
    status, body = await post(client, quiet, {"message": "psst"})
    assert status == 200 and body["response"] == "" and body["silent"] is True

    refusing = await spawn(kernel, "refusing", PY_AGENT.format(name="refusing", target="refuse"))
    status, body = await post(client, refusing, {"message": "please"})
    assert status == 422 and body["code"] == "module_refused" and body["details"] == {"why": "test"}
    assert body["error"] == "the module refuses" and body["request_id"]
    broken = await spawn(kernel, "broken", PY_AGENT.format(name="broken", target="crash"))
    status, body = await post(client, broken, {"message": "x"})
    assert status == 502 and body["code"] == "agent_module_failed" and "RuntimeError" in body["error"]
    # Nothing of a failed turn is stored; the failures are audited.
    for agent_id in (refusing, broken):
        session = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
        assert session["messages"] == []
    entries, _ = await kernel.audit.recent(50)
    failed = [e for e in entries if e["action"] == "AgentModuleFailed"]
    assert {json.loads(e["detail"])["code"] for e in failed} == {"module_refused", "agent_module_failed"}

    # A wasm: agent while no plugin serves wasm: refused before anything runs, with a clear error.
    wasm = await spawn(kernel, "wasm-less", 'name = "wasm-less"\nmodule = "wasm:agent.wasm"\n')
    status, body = await post(client, wasm, {"message": "hi"})
    assert status == 412 and body["code"] == "agent_module_unavailable"
    assert "'wasm:'" in body["error"] and body["details"]["served"] == ["python"]
    # An unknown scheme is refused when the agent is spawned (manifest validation).
    response = await client.post("/api/agents", json={"manifest_toml": 'name = "odd"\nmodule = "lua:x.lua"\n'})
    assert response.status_code == 400


async def test_a_module_turn_can_be_stopped_and_the_session_stays_usable(start_runtime: Any, spawn: Any) -> None:
    plugin = ModulePlugin()
    kernel, client = await start_runtime(plugins={"modules": plugin})
    agent_id = await spawn(kernel, "slowpoke", PY_AGENT.format(name="slowpoke", target="slow"))
    pending = asyncio.ensure_future(post(client, agent_id, {"message": "wait"}))
    await asyncio.wait_for(plugin.started.wait(), 10)
    response = await client.post(f"/api/agents/{agent_id}/stop")
    assert response.status_code == 200
    status, body = await pending
    assert status == 409 and body["code"] == "run_cancelled"
    plugin.release.set()
    status, body = await post(client, agent_id, {"message": "now"})
    assert status == 200 and body["response"] == "finally"


def test_registry_refuses_bad_and_duplicate_schemes() -> None:
    registry = ModuleRegistry()
    registry.register("wasm", lambda request: "x", owner="sandbox")
    with pytest.raises(ValueError, match="already served by sandbox"):
        registry.register("wasm", lambda request: "y", owner="other")
    with pytest.raises(ValueError, match="LLM loop"):
        registry.register("builtin", lambda request: "y")
    with pytest.raises(ValueError, match="must match"):
        registry.register("Bad Scheme", lambda request: "y")
    with pytest.raises(ValueError, match="not callable"):
        registry.register("python", "nope")  # type: ignore[arg-type]
    assert registry.resolve("builtin:chat") is None
    assert registry.resolve("wasm:a/b.wat").target == "a/b.wat"
    assert registry.schemes() == {"wasm": "sandbox"}
    assert registry.unregister("wasm", owner="other") is False and registry.unregister("wasm") is True


async def test_a_module_agents_session_is_compacted_without_a_model(start_runtime: Any, spawn: Any,
                                                                      fake_llm: Any, caplog: Any) -> None:
    # Over the threshold, the session of a module agent is compacted with the plain summary: there is
    # no model to ask (the scheme is not a provider), so nothing may reach the LLM server.
    plugin = ModulePlugin()
    kernel, client = await start_runtime("[compaction]\nthreshold_messages = 3\nkeep_recent = 2\n",
                                         plugins={"modules": plugin})
    agent_id = await spawn(kernel, "py-long", PY_AGENT.format(name="py-long", target="echo"))
    for text in ("one", "two", "three"):
        status, body = await post(client, agent_id, {"message": text})
        assert status == 200, body
    assert fake_llm.requests == []
    # No summary call was attempted (it used to ask a provider named after the scheme, fail, and fall back).
    assert not [r for r in caplog.records if "compaction summary failed" in r.getMessage()]
    # The third turn found 4 stored messages over the threshold: the older ones became a summary.
    assert body["response"].startswith("echo(3 earlier)"), body
    first = plugin.requests[-1].history[0]
    summary = first.content if isinstance(first.content, str) else first.blocks()[0].text
    assert "one" in summary and first.role == "user"
    # The explicit compaction (the route and the WebSocket command use it) takes the same path.
    response = await client.post(f"/api/agents/{agent_id}/session/compact")
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert fake_llm.requests == []
    assert not [r for r in caplog.records if "compaction summary failed" in r.getMessage()]

"""``module = "wasm:<path>"`` agents over HTTP: the runtime dispatches their messages to the sandbox
(register_agent_modules); replies, the deadline, the memory cap, capability-checked host calls, path
refusals and the content-hash module cache."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from librefang.app import build_app
from librefang.testing import make_client
from librefang_runtime.models import usage as usage_table
from librefang_sandbox import api as sandbox_api

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shout_agent.wat"
ALLOC = """
  (memory (export "memory") {pages})
  (global $next (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
"""
SPIN = f"""(module {ALLOC.format(pages=1)}
  (func (export "handle") (param i32 i32) (result i64) (loop $forever (br $forever)) (i64.const 0)))"""
# Grows memory until the host refuses, then replies with the number of 64 KiB pages it holds (one byte).
MEMORY_BOMB = f"""(module {ALLOC.format(pages=1)}
  (func (export "handle") (param i32 i32) (result i64)
    (block $refused (loop $more
      (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
    (i32.store8 (i32.const 0) (memory.size))
    (i64.const 1)))"""
HUGE_MEMORY = f'(module {ALLOC.format(pages=1024)} (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))'
CAP = 1024 * 1024


async def start(start_sandbox: Any, config: str = "") -> tuple[Any, Any]:
    kernel = await start_sandbox(config)
    return kernel, make_client(build_app(kernel))


async def wasm_agent(kernel: Any, agent: Any, name: str, source: str | None = None, module: str | None = None,
                     tools: str = '["*"]') -> Any:
    """A wasm: agent whose module (the example, or ``source``) sits in its own workspace."""
    context = await agent(kernel, name, extra=f'module = "wasm:{module or "agent.wat"}"\n', tools=tools)
    if module is None:
        target = context.workspace / "agent.wat"
        if source is None:
            shutil.copy(EXAMPLE, target)
        else:
            target.write_text(source)
    return context


async def post(client: Any, agent_id: str, message: str) -> tuple[int, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": message})
    return response.status_code, await response.get_json()


async def messages(client: Any, agent_id: str) -> list[str]:
    session = await (await client.get(f"/api/agents/{agent_id}/session")).get_json()
    return [m["content"] for m in session["messages"]]


async def test_a_message_to_a_wasm_agent_gets_its_reply(start_sandbox, agent):
    kernel, client = await start(start_sandbox)
    shouter = await wasm_agent(kernel, agent, "shouter")
    with kernel.bus.subscribe("runtime.turn_completed") as events:
        status, body = await post(client, shouter.agent_id, "hello, wasm!")
        event = events.queue.get_nowait()
    assert status == 200, body
    assert body["response"] == "HELLO, WASM!"
    assert (body["provider"], body["model"], body["input_tokens"], body["output_tokens"]) == (
        "wasm", "wasm:agent.wat", 0, 0)
    assert event.data["agent_id"] == shouter.agent_id and event.data["outcome"] == "ok"
    # Stored in the session and metered (zero tokens) like any turn.
    status, body = await post(client, shouter.agent_id, "again")
    assert body["response"] == "AGAIN"
    assert await messages(client, shouter.agent_id) == ["hello, wasm!", "HELLO, WASM!", "again", "AGAIN"]
    async with kernel.db.begin() as conn:
        rows = (await conn.execute(sa.select(usage_table))).all()
    assert [(r.agent_id, r.provider, r.input_tokens, r.outcome) for r in rows] == [
        (shouter.agent_id, "wasm", 0, "ok")] * 2
    # The SSE stream carries the reply too.
    response = await client.post(f"/api/agents/{shouter.agent_id}/message/stream", json={"message": "stream me"})
    text = await response.get_data(as_text=True)
    assert response.status_code == 200 and '"content": "STREAM ME"' in text and "event: result" in text
    # And the WebSocket chat.
    async with client.websocket(f"/api/agents/{shouter.agent_id}/ws") as ws:
        assert json.loads(await ws.receive())["type"] == "connected"
        await ws.send(json.dumps({"type": "message", "content": "over the socket", "message_id": "m-1"}))
        frames = []
        while not frames or frames[-1]["type"] not in ("response", "error"):
            frames.append(json.loads(await asyncio.wait_for(ws.receive(), timeout=10)))
    assert frames[-1]["type"] == "response" and frames[-1]["content"] == "OVER THE SOCKET", frames
    assert frames[-1]["message_id"] == "m-1" and frames[-1]["input_tokens"] == 0
    # Compiled once (cache keyed by content), then served from the cache.
    wasm = kernel.services["sandbox"].wasm.describe()
    assert wasm["modules_compiled"] == 1 and wasm["module_cache_hits"] >= 3
    security = await (await client.get("/api/security")).get_json()
    wasm_entry = next(s for s in security["systems"] if s["name"] == "wasm_sandbox")
    assert wasm_entry["config"]["agent_modules"]["scheme"] == "wasm"
    assert wasm_entry["config"]["agent_modules"]["agent_modules_dir"] == "wasm"


async def test_an_infinite_loop_is_stopped_by_the_deadline_and_the_session_stays_consistent(start_sandbox, agent):
    kernel, client = await start(start_sandbox, "[wasm_sandbox]\ntimeout_secs = 0.5\nfuel = 10000000000000\n")
    looper = await wasm_agent(kernel, agent, "looper")
    assert (await post(client, looper.agent_id, "before"))[1]["response"] == "BEFORE"
    module = looper.workspace / "agent.wat"
    module.write_text(SPIN)  # new content: recompiled, not served from the cache
    started = time.monotonic()
    status, body = await post(client, looper.agent_id, "spin")
    elapsed = time.monotonic() - started
    assert status == 504 and body["code"] == "wasm_deadline_exceeded", body
    assert "deadline exceeded" in body["error"] and "looper" in body["error"] and body["request_id"]
    assert 0.4 < elapsed < 5.0
    # Nothing of the failed turn was stored; the session takes the next message normally.
    assert await messages(client, looper.agent_id) == ["before", "BEFORE"]
    shutil.copy(EXAMPLE, module)
    assert (await post(client, looper.agent_id, "after"))[1]["response"] == "AFTER"
    assert await messages(client, looper.agent_id) == ["before", "BEFORE", "after", "AFTER"]
    entries, _ = await kernel.audit.recent(50)
    failed = [json.loads(e["detail"]) for e in entries if e["action"] == "AgentModuleFailed"]
    assert [f["code"] for f in failed] == ["wasm_deadline_exceeded"]
    assert kernel.services["sandbox"].wasm.describe()["deadline_exceeded"] == 1


async def test_a_memory_bomb_is_capped(start_sandbox, agent):
    kernel, client = await start(start_sandbox, f"[wasm_sandbox]\nmemory_bytes = {CAP}\n")
    bomber = await wasm_agent(kernel, agent, "bomber", MEMORY_BOMB)
    status, body = await post(client, bomber.agent_id, "grow")
    assert status == 200, body
    assert ord(body["response"]) * 65536 == CAP  # it got up to the cap, never past it
    greedy = await wasm_agent(kernel, agent, "greedy", HUGE_MEMORY)  # asks for 64 MiB up front
    status, body = await post(client, greedy.agent_id, "start")
    assert status == 502 and body["code"] == "wasm_instantiation_failed", body
    assert await messages(client, greedy.agent_id) == []


async def test_host_calls_of_a_wasm_agent_are_checked_against_its_capabilities(start_sandbox, agent):
    kernel, client = await start(start_sandbox)
    reader = await wasm_agent(kernel, agent, "lister", tools='["file_list"]')
    (reader.workspace / "secret.txt").write_text("s3cret")
    request = json.dumps({"method": "fs_read", "params": {"path": "secret.txt"}})
    status, body = await post(client, reader.agent_id, f"/host {request}")
    assert status == 200, body
    answer = json.loads(body["response"])
    assert answer["denied"] is True and "file_read" in answer["error"] and "s3cret" not in body["response"]
    entries, _ = await kernel.audit.recent(50)
    assert any(e["action"] == "WasmCapabilityDenied" and e["actor"] == reader.agent_id for e in entries)
    # What its capabilities allow works: listing its workspace.
    status, body = await post(client, reader.agent_id, '/host {"method": "fs_list"}')
    assert "secret.txt" in json.loads(body["response"])["ok"]
    # An agent that may read files reads it.
    trusted = await wasm_agent(kernel, agent, "trusted")
    (trusted.workspace / "note.txt").write_text("hi there")
    status, body = await post(client, trusted.agent_id,
                              '/host {"method": "fs_read", "params": {"path": "note.txt"}}')
    assert json.loads(body["response"]) == {"ok": "hi there"}
    escape = await post(client, trusted.agent_id, '/host {"method": "fs_read", "params": {"path": "../lister/secret.txt"}}')
    assert "s3cret" not in escape[1]["response"] and "workspace" in json.loads(escape[1]["response"])["error"]


async def test_module_paths_are_confined(start_sandbox, agent, librefang_home):
    kernel, client = await start(start_sandbox)
    owner = await wasm_agent(kernel, agent, "owner")
    for name, module, code in [("climber", "../owner/agent.wat", "agent_module_path_refused"),
                               ("absolute", str(owner.workspace / "agent.wat"), "agent_module_path_refused"),
                               ("missing", "nothing.wat", "agent_module_not_found")]:
        context = await wasm_agent(kernel, agent, name, module=module)
        status, body = await post(client, context.agent_id, "hi")
        assert status == 412 and body["code"] == code, (name, body)
    # A symlink in the workspace pointing outside it is not followed out.
    linker = await wasm_agent(kernel, agent, "linker", module="link.wat")
    (linker.workspace / "link.wat").symlink_to(owner.workspace / "agent.wat")
    status, body = await post(client, linker.agent_id, "hi")
    assert status == 412 and body["code"] == "agent_module_not_found"
    # The shared modules folder (LIBREFANG_HOME/wasm by default) serves every agent.
    (librefang_home / "wasm").mkdir()
    shutil.copy(EXAMPLE, librefang_home / "wasm" / "shared.wat")
    sharer = await wasm_agent(kernel, agent, "sharer", module="shared.wat")
    assert (await post(client, sharer.agent_id, "shared"))[1]["response"] == "SHARED"
    # The API runs the same module outside a session turn.
    assert await sandbox_api.run_wasm_agent(kernel, sharer.agent_id, "direct") == "DIRECT"

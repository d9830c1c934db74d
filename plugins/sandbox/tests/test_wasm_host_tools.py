"""Tool-backed host calls (kv_get, kv_set, agent_send) run the real tools through before_tool_call."""

from __future__ import annotations

import json
from pathlib import Path

import librefang
import pytest
from librefang_runtime.api import Deny

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "host_proxy.wat"
TOOL = (f'[[wasm_sandbox.tools]]\nname = "wasm_host"\npath = "{EXAMPLE}"\n'
        'input_schema = { type = "object", properties = { method = { type = "string" } } }\n')


class RefuseAgentSend:
    """A policy plugin: refuses every agent_send and remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @librefang.hookimpl
    def before_tool_call(self, call, context):
        self.seen.append((call.name, context.agent_id))
        return Deny("agent messages are frozen") if call.name == "agent_send" else None


async def test_kv_and_agent_send_go_through_tools_and_policy(start_sandbox, agent, call):
    memory_plugin = pytest.importorskip("librefang_memory.plugin")
    policy = RefuseAgentSend()
    kernel = await start_sandbox(TOOL, extra_plugins={"memory": memory_plugin, "policy": policy})
    ctx = await agent(kernel, "keeper")
    stored = json.loads(await call(ctx, "wasm_host", method="kv_set", params={"key": "color", "value": "blue"}))
    assert "version 1" in stored["ok"]
    assert json.loads(await call(ctx, "wasm_host", method="kv_get", params={"key": "color"})) == {"ok": '"blue"'}
    # The memory tool's own namespace check applies (no memory_write capability for "shared").
    shared = json.loads(await call(ctx, "wasm_host", method="kv_set",
                                   params={"key": "k", "value": 1, "namespace": "shared"}))
    assert "memory_write" in shared["error"]
    # The before_tool_call policy sees the calls made from inside WASM, and its refusal reaches the guest.
    refused = json.loads(await call(ctx, "wasm_host", method="agent_send", params={"agent": "x", "message": "hi"}))
    assert "agent messages are frozen" in refused["error"]
    assert ("memory_store", ctx.agent_id) in policy.seen and ("agent_send", ctx.agent_id) in policy.seen
    # Without memory_store among its tools the agent cannot write KV through WASM either.
    limited = await agent(kernel, "reader", tools='["memory_recall", "wasm_host"]')
    denied = json.loads(await call(limited, "wasm_host", method="kv_set", params={"key": "a", "value": 2}))
    assert denied["denied"] is True and "memory_store" in denied["error"]


async def test_kv_without_the_memory_plugin(start_sandbox, agent, call):
    kernel = await start_sandbox(TOOL)
    ctx = await agent(kernel, "forgetful")
    answer = json.loads(await call(ctx, "wasm_host", method="kv_get", params={"key": "x"}))
    assert "denied" in answer and "memory_recall" in answer["error"]

"""The WASM sandbox: fuel, deadline, memory cap, fresh stores, capability-checked host calls, tools
(``wasm:`` agents: test_wasm_agents.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from librefang_runtime.api import ToolError
from librefang_runtime.api import runtime as runtime_of
from librefang_sandbox.config import WasmSandboxConfig
from librefang_sandbox.wasm import WasmError, WasmSandbox

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "host_proxy.wat"
ALLOC = """
  (memory (export "memory") {pages})
  (global $next (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $n)))
    (local.get $p))
"""
SPIN = f"""(module {ALLOC.format(pages=1)}
  (func (export "execute") (param i32 i32) (result i64) (loop $forever (br $forever)) (i64.const 0)))"""
MEMORY_BOMB = f"""(module {ALLOC.format(pages=1)}
  (func (export "execute") (param i32 i32) (result i64)
    (block $refused (loop $more
      (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
    ;; the host refused to grow: report how many pages we hold, as one byte at address 0
    (i32.store8 (i32.const 0) (memory.size))
    (i64.const 1)))"""
HUGE_MEMORY = f"(module {ALLOC.format(pages=1024)} (func (export \"execute\") (param i32 i32) (result i64) (i64.const 0)))"
COUNTER = f"""(module {ALLOC.format(pages=1)}
  (global $calls (mut i32) (i32.const 0))
  (func (export "execute") (param i32 i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store8 (i32.const 0) (i32.add (i32.const 48) (global.get $calls)))
    (i64.const 1)))"""


def module(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.wat"
    path.write_text(text)
    return path


async def test_infinite_loop_is_stopped_by_the_deadline(tmp_path):
    sandbox = WasmSandbox(WasmSandboxConfig(fuel=10**13, timeout_secs=0.5))
    started = time.monotonic()
    with pytest.raises(WasmError, match="deadline exceeded") as info:
        await sandbox.run(module(tmp_path, "spin", SPIN), b"{}")
    elapsed = time.monotonic() - started
    assert info.value.kind == "deadline" and 0.4 < elapsed < 5.0
    sandbox.close()


async def test_fuel_limit_stops_a_long_computation(tmp_path):
    sandbox = WasmSandbox(WasmSandboxConfig(fuel=100_000, timeout_secs=30))
    started = time.monotonic()
    with pytest.raises(WasmError, match="fuel exhausted") as info:
        await sandbox.run(module(tmp_path, "spin", SPIN), b"{}")
    assert info.value.kind == "fuel" and time.monotonic() - started < 10
    assert sandbox.describe()["fuel_exhausted"] == 1
    sandbox.close()


async def test_memory_cap_refuses_growth_and_oversized_modules(tmp_path):
    cap = 1024 * 1024
    sandbox = WasmSandbox(WasmSandboxConfig(memory_bytes=cap))
    out = await sandbox.run(module(tmp_path, "bomb", MEMORY_BOMB), b"{}")
    assert ord(out) * 65536 == cap  # it got exactly up to the cap, never past it
    with pytest.raises(WasmError, match="could not run"):
        await sandbox.run(module(tmp_path, "huge", HUGE_MEMORY), b"{}")
    sandbox.close()


async def test_every_call_gets_a_fresh_store_and_bad_modules_are_refused(tmp_path):
    sandbox = WasmSandbox(WasmSandboxConfig())
    path = module(tmp_path, "counter", COUNTER)
    assert [await sandbox.run(path, b"{}") for _ in range(3)] == ["1", "1", "1"]
    with pytest.raises(WasmError, match="invalid WASM module"):
        await sandbox.run(module(tmp_path, "broken", "(module (func $f (result i32)))"), b"{}")
    wasi = '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))'
    with pytest.raises(WasmError, match="could not run"):
        await sandbox.run(module(tmp_path, "wasi", wasi), b"{}")
    with pytest.raises(WasmError, match="must export"):
        await sandbox.run(module(tmp_path, "empty", "(module)"), b"{}")
    with pytest.raises(WasmError, match="no WASM module"):
        await sandbox.run(tmp_path / "missing.wasm", b"{}")
    sandbox.close()


def host_tool_config(host_calls: str = "") -> str:
    extra = f"host_calls = {host_calls}\n" if host_calls else ""
    return (f'[[wasm_sandbox.tools]]\nname = "wasm_host"\npath = "{EXAMPLE}"\n{extra}'
            'input_schema = { type = "object", properties = { method = { type = "string" } } }\n')


async def test_host_calls_are_checked_against_capabilities(start_sandbox, agent, call):
    kernel = await start_sandbox(host_tool_config())
    assert runtime_of(kernel).tools.get("wasm_host").source == "wasm"
    full = await agent(kernel, "trusted")
    written = json.loads(await call(full, "wasm_host", method="fs_write",
                                    params={"path": "notes/a.txt", "content": "from wasm"}))
    assert written == {"ok": 9} and (full.workspace / "notes" / "a.txt").read_text() == "from wasm"
    assert json.loads(await call(full, "wasm_host", method="fs_read", params={"path": "notes/a.txt"})) == {
        "ok": "from wasm"}
    assert json.loads(await call(full, "wasm_host", method="fs_list", params={"path": "notes"})) == {"ok": ["a.txt"]}
    assert "unix" in json.loads(await call(full, "wasm_host", method="time_now"))["ok"]
    escape = json.loads(await call(full, "wasm_host", method="fs_read", params={"path": "../trusted/notes/a.txt"}))
    assert "inside the workspace" in escape["error"]

    # An agent that may only list files: reading and writing through the WASM tool is denied.
    (full.workspace / "secret.txt").write_text("s3cret")
    limited = await agent(kernel, "limited", tools='["file_list", "wasm_host"]')
    denied = json.loads(await call(limited, "wasm_host", method="fs_read", params={"path": "secret.txt"}))
    assert denied["denied"] is True and "file_read" in denied["error"] and "s3cret" not in json.dumps(denied)
    assert json.loads(await call(limited, "wasm_host", method="fs_list"))["ok"] == []
    entries, _ = await kernel.audit.recent(10)
    assert any(e["action"] == "WasmCapabilityDenied" and e["outcome"] == "denied" for e in entries)
    # Without an agent only the clock is available.
    from librefang_runtime.api import ToolContext

    anonymous = ToolContext(kernel=kernel, agent_id="", agent_name="", session_id="", workspace=None)
    assert json.loads(await call(anonymous, "wasm_host", method="fs_list"))["denied"] is True
    assert "ok" in json.loads(await call(anonymous, "wasm_host", method="time_now"))


async def test_declared_host_calls_narrow_even_a_full_agent(start_sandbox, agent, call):
    kernel = await start_sandbox(host_tool_config('["time_now"]'))
    ctx = await agent(kernel, "powerful")
    answer = json.loads(await call(ctx, "wasm_host", method="fs_list"))
    assert answer["denied"] is True and "does not declare" in answer["error"]
    # Taking the plugin down takes its WASM tools out of the runtime.
    await kernel.stop_plugin("sandbox")
    assert runtime_of(kernel).tools.get("wasm_host") is None


async def test_wasm_tool_errors(start_sandbox, agent, call, tmp_path):
    spin = module(tmp_path, "spin", SPIN)
    kernel = await start_sandbox(
        '[wasm_sandbox]\ntimeout_secs = 0.3\nfuel = 10000000000000\n'
        f'[[wasm_sandbox.tools]]\nname = "spinner"\npath = "{spin}"\n'
        f'[[wasm_sandbox.tools]]\nname = "broken"\npath = "{tmp_path / "nope.wasm"}"\n')
    assert runtime_of(kernel).tools.get("broken") is None
    ctx = await agent(kernel, "runner")
    with pytest.raises(ToolError, match="spinner: deadline exceeded"):
        await call(ctx, "spinner")


async def test_concurrent_runs_are_bounded(tmp_path):
    import asyncio

    sandbox = WasmSandbox(WasmSandboxConfig(fuel=10**13, timeout_secs=0.3, max_concurrent=1))
    path = module(tmp_path, "spin", SPIN)
    started = time.monotonic()
    results = await asyncio.gather(*(sandbox.run(path, b"{}") for _ in range(2)), return_exceptions=True)
    assert all(isinstance(r, WasmError) and r.kind == "deadline" for r in results)
    assert time.monotonic() - started >= 0.55  # one after the other, each with its own full deadline
    sandbox.close()

"""What other plugins may import from the sandbox plugin.

Run a WASM module under ``[wasm_sandbox]`` (fuel, deadline, memory cap, capability-checked host
calls) for an agent, or one turn of a ``module = "wasm:<path>"`` agent::

    from librefang_sandbox import api as sandbox

    reply = await sandbox.run_wasm_agent(kernel, agent_id, "hello")
    text = await sandbox.run_wasm(kernel, Path("tool.wat"), {"x": 1}, agent_id=agent_id,
                                  workspace=workspace, host_calls=["fs_read"])

``run_wasm_agent`` raises :class:`librefang_runtime.api.ModuleError` (with the reason, status and code:
fuel, deadline, trap, module not found...); ``run_wasm`` raises :class:`WasmError`. The runtime sends
messages of ``wasm:`` agents here itself (``register_agent_modules``); the agent ABI is described in
``librefang_sandbox.wasm_agents``. The tools ``shell_exec`` and ``process_*`` are registered with the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from librefang_sandbox.config import HOST_METHODS
from librefang_sandbox.wasm import WasmError

__all__ = ["HOST_METHODS", "WasmError", "run_wasm", "run_wasm_agent", "sandbox"]


def sandbox(kernel: Any) -> Any:
    """The sandbox service of a started kernel (``KeyError`` when the sandbox plugin is not running)."""
    return kernel.services["sandbox"]


async def run_wasm_agent(kernel: Any, agent_id: str, message: str, *, session_id: str = "") -> str:
    """Run a ``wasm:`` agent's module on ``message`` outside a session turn; returns its reply text.
    (A message through the runtime, ``POST /api/agents/{id}/message``, is stored and metered too.)"""
    from librefang_sandbox.wasm_agents import run_agent

    return await run_agent(kernel, agent_id, message, session_id=session_id)


async def run_wasm(kernel: Any, path: Path, payload: Any, *, agent_id: str = "", workspace: Path | None = None,
                   host_calls: list[str] | None = None, actor: str = "wasm") -> str:
    """Run the module at ``path`` on ``payload`` (JSON-able) for an agent (or none); the host calls it may
    make are ``host_calls`` (default all) narrowed by the agent's capabilities."""
    from librefang_sandbox.wasm_tools import run_module

    service = sandbox(kernel)
    return await run_module(kernel, service.wasm, path, payload, declared=list(host_calls or HOST_METHODS),
                            agent_id=agent_id, workspace=workspace, actor=actor)

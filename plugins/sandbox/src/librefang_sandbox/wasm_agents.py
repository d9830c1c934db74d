"""``module = "wasm:<path>"`` agents: the runtime hands their messages to :func:`handle_turn`
(registered for the ``wasm`` scheme through ``register_agent_modules``).

Agent ABI (one call per message, a fresh store and instance each time):

- the module exports ``memory``, ``alloc(len: i32) -> i32`` and ``handle(ptr: i32, len: i32) -> i64``;
- the host writes the user's message (plain UTF-8, exactly as sent) into a buffer from ``alloc`` and
  calls ``handle``, which returns ``(out_ptr << 32) | out_len`` of the reply (UTF-8). An empty reply
  stores nothing; ``NO_REPLY`` makes the turn silent;
- it may import ``librefang.host_call(ptr, len) -> i64`` (JSON ``{"method", "params"}`` in, ``{"ok"}`` or
  ``{"error"}`` out, see ``wasm.py``). Every method is declared for an agent; whether it is granted
  is decided by the agent's own capabilities (``wasm_host.py``), so a ``wasm:`` agent can do through
  host calls only what its manifest lets it do with tools;
- fuel, the epoch deadline, the memory cap and the input/output limits of ``[wasm_sandbox]`` apply.

The path is looked up inside the agent's workspace, then in ``[wasm_sandbox] agent_modules_dir``
(default ``LIBREFANG_HOME/wasm``); absolute paths, ``..`` and symlinks leading out are refused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from librefang_agents import api as agents_api
from librefang_runtime.api import ModuleError, ModuleRequest

from librefang_sandbox.config import HOST_METHODS
from librefang_sandbox.wasm import WasmError
from librefang_sandbox.wasm_tools import resolve_module, run_module

SCHEME = "wasm"
ENTRY = "handle"
# WasmError kind -> (HTTP status, error code) of the failed turn
FAILURES = {
    "deadline": (504, "wasm_deadline_exceeded"),
    "fuel": (502, "wasm_fuel_exhausted"),
    "trap": (502, "wasm_trap"),
    "instantiation": (502, "wasm_instantiation_failed"),
    "bad_module": (502, "wasm_bad_module"),
    "input_too_large": (413, "wasm_input_too_large"),
    "output_too_large": (502, "wasm_output_too_large"),
}


def module_path(kernel: Any, record: Any, modules_dir: str) -> Path:
    """The module file of a ``wasm:<path>`` agent (blocks: call in a thread). 412 ``ModuleError``
    when the path is refused or nothing is there."""
    module = record.parsed().module
    if not module.startswith(SCHEME + ":"):
        raise ModuleError(f"agent {record.name!r} is not a WASM agent (module = {module[:200]!r})",
                          status=412, code="agent_module_unavailable")
    relative = module[len(SCHEME) + 1:]
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith(("/", "\\", "~")) or ".." in parts or "\x00" in relative:
        raise ModuleError(f"WASM module path {relative[:200]!r} must be relative, without '..'",
                          status=412, code="agent_module_path_refused")
    roots = [agents_api.workspace_of(kernel, record).resolve(), resolve_module(kernel.home, modules_dir).resolve()]
    for root in roots:
        candidate = (root / relative).resolve()  # symlinks resolved: one pointing out is refused below
        if candidate.is_relative_to(root) and candidate.is_file():
            return candidate
    raise ModuleError(f"WASM module {relative[:200]!r} not found in the agent's workspace or the shared "
                      f"modules folder ({modules_dir})", status=412, code="agent_module_not_found")


async def run_agent(kernel: Any, agent_id: str, message: str, *, session_id: str = "",
                    workspace: Path | None = None) -> str:
    """One message to a ``wasm:`` agent: its reply text, or :class:`ModuleError` saying why not."""
    service = kernel.services.get("sandbox")
    if service is None:
        raise ModuleError("the sandbox plugin is not running", status=503, code="sandbox_unavailable")
    record = await agents_api.registry(kernel).get(agent_id)
    path = await asyncio.to_thread(module_path, kernel, record, service.wasm.config.agent_modules_dir)
    if workspace is None:
        workspace = await agents_api.ensure_workspace(kernel, record)
    try:
        return await run_module(kernel, service.wasm, path, message.encode("utf-8"), declared=list(HOST_METHODS),
                                agent_id=record.id, workspace=workspace, actor=f"agent:{record.name}",
                                session_id=session_id, entry=ENTRY)
    except WasmError as exc:
        status, code = FAILURES.get(exc.kind, (502, "wasm_failed"))
        raise ModuleError(f"WASM agent {record.name!r}: {exc}", status=status, code=code,
                          details={"kind": exc.kind}) from None


async def handle_turn(request: ModuleRequest) -> str:
    """The ``wasm`` scheme's handler (``register_agent_modules``): one turn of the agent."""
    return await run_agent(request.kernel, request.agent_id, request.message, session_id=request.session_id,
                           workspace=request.context.workspace)

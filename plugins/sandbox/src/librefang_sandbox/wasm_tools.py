"""WASM tools from ``[[wasm_sandbox.tools]]``, run in the WASM sandbox (``wasm:`` agents: ``wasm_agents.py``).

Tools are added to the runtime's registry when the sandbox starts (the ``register_tools`` hook
receives no kernel, so it cannot read this plugin's configuration) and removed when it stops.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from librefang_agents import api as agents_api
from librefang_providers.api import ToolUseBlock
from librefang_runtime.api import Tool, ToolContext, ToolError
from librefang_runtime.api import runtime as runtime_of

from librefang_sandbox.config import WasmToolConfig
from librefang_sandbox.wasm import WasmError, WasmSandbox
from librefang_sandbox.wasm_host import HostContext, grants

log = logging.getLogger("librefang.sandbox.wasm")


async def host_context(kernel: Any, sandbox: WasmSandbox, declared: list[str], agent_id: str,
                       workspace: Path | None, session_id: str = "") -> HostContext:
    """The host calls a run may make: the module's declared methods narrowed by the agent's rights."""
    visible = None
    run_tool = None
    if agent_id:
        record = await agents_api.registry(kernel).get(agent_id)
        runtime = runtime_of(kernel)
        visible = agents_api.visible_tools(record.parsed(), record.mode, runtime.tools.names())

        async def run_tool(name: str, tool_input: dict[str, Any]) -> str:
            tool = runtime.tools.get(name)
            if tool is None:
                raise ToolError(f"{name} is not available (the plugin offering it is not running)")
            context = ToolContext(kernel=kernel, agent_id=record.id, agent_name=record.name, session_id=session_id,
                                  workspace=workspace, call_id=f"wasm-{uuid.uuid4().hex[:12]}", tool_name=name)
            verdict = await runtime.policy(ToolUseBlock(context.call_id, name, tool_input), context)
            if verdict is not None:
                raise ToolError(f"the call to {name} was refused: {verdict.reason}")
            value = tool.handler(dict(tool_input), context)
            if inspect.isawaitable(value):
                value = await value
            return value if isinstance(value, str) else str(value)

    if workspace is not None:
        await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
    config = sandbox.config
    return HostContext(granted=grants(declared, visible, workspace is not None), max_calls=config.max_host_calls,
                       workspace=workspace, loop=asyncio.get_running_loop(), run_tool=run_tool,
                       deadline=time.monotonic() + config.timeout_secs)


async def run_module(kernel: Any, sandbox: WasmSandbox, path: Path, payload: Any, *, declared: list[str],
                     agent_id: str, workspace: Path | None, actor: str, session_id: str = "",
                     entry: str = "execute") -> str:
    """Run one module with the host calls it may make; denied calls are audited. ``payload`` is sent
    as JSON, or as is when it is ``bytes``."""
    host = await host_context(kernel, sandbox, declared, agent_id, workspace, session_id)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        return await sandbox.run(path, data, host, entry)
    finally:
        for method, reason in host.denied[:20]:
            await kernel.audit.record("WasmCapabilityDenied", actor=agent_id or "anonymous", target=actor,
                                      detail={"method": method, "reason": reason}, outcome="denied")


def resolve_module(home: Path, configured: str) -> Path:
    """A configured module path: absolute, or relative to ``LIBREFANG_HOME``."""
    path = Path(configured).expanduser()
    return path if path.is_absolute() else home / path


def make_tool(service: Any, spec: WasmToolConfig) -> Tool:
    """A runtime tool that runs ``spec`` in the sandbox."""
    path = resolve_module(service.kernel.home, spec.path)

    async def handler(data: dict[str, Any], context: ToolContext) -> str:
        try:
            return await run_module(context.kernel, service.wasm, path, data, declared=spec.host_calls,
                                    agent_id=context.agent_id, workspace=context.workspace, actor=spec.name,
                                    session_id=context.session_id)
        except WasmError as exc:
            raise ToolError(f"{spec.name}: {exc}") from None

    # The sandbox's own deadline stops the guest; the runtime's timeout is only a backstop.
    return Tool(spec.name, spec.description or f"WASM tool {spec.name}", handler, dict(spec.input_schema),
                timeout=service.wasm.config.timeout_secs + 5, source="wasm")


async def register_configured(service: Any) -> list[str]:
    """Compile every configured WASM tool and add it to the runtime; a module that does not compile
    or a name already taken is logged and reported, the others are added."""
    if not service.wasm.config.tools:
        return []
    try:
        registry = runtime_of(service.kernel).tools
    except KeyError:  # the runtime failed to start: the sandbox still serves commands and its API
        for spec in service.wasm.config.tools:
            service.wasm_tool_errors[spec.name] = "the runtime plugin is not running"
        return []
    added = []
    for spec in service.wasm.config.tools:
        path = resolve_module(service.kernel.home, spec.path)
        try:
            await asyncio.to_thread(service.wasm.load, path)
            registry.register(make_tool(service, spec), owner="sandbox")
        except (WasmError, ValueError) as exc:
            service.wasm_tool_errors[spec.name] = str(exc)
            log.error("WASM tool %s not added: %s", spec.name, exc)
            continue
        added.append(spec.name)
    return added


def unregister(service: Any, names: list[str]) -> None:
    """Take this plugin's WASM tools out of the runtime's registry again."""
    try:
        registry = runtime_of(service.kernel).tools
    except KeyError:
        return
    for name in names:
        tool = registry.tools.get(name)
        if tool is not None and tool.owner == "sandbox":
            del registry.tools[name]

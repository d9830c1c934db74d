"""Wiring of the sandbox plugin (hooks only)."""

from __future__ import annotations

from typing import Any

import librefang


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_sandbox.config import ExecPolicyConfig, WasmSandboxConfig

    register("exec_policy", ExecPolicyConfig)
    register("wasm_sandbox", WasmSandboxConfig)


@librefang.hookimpl
def register_tools(register: Any) -> None:
    from librefang_sandbox.tools import exec_tools

    for tool in exec_tools():
        register(tool)


@librefang.hookimpl
def register_agent_modules(register: Any) -> None:
    from librefang_sandbox.wasm_agents import SCHEME, handle_turn

    register(SCHEME, handle_turn)


@librefang.hookimpl
def security_checks(register: Any) -> None:
    from librefang_sandbox.service import describe_exec, describe_wasm

    register("subprocess_sandbox", describe_exec)
    register("wasm_sandbox", describe_wasm)


@librefang.hookimpl
async def startup(kernel: Any) -> None:
    from librefang_sandbox.service import SandboxService

    service = SandboxService(kernel)
    kernel.services["sandbox"] = service
    await service.start()


@librefang.hookimpl
async def shutdown(kernel: Any) -> None:
    service = kernel.services.pop("sandbox", None)
    if service is not None:
        await service.aclose()

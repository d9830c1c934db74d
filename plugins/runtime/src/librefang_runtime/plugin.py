"""Wiring of the runtime plugin (hooks only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import librefang
from librefang.plugins import PluginBound

from librefang_runtime import hookspecs  # noqa: F401  (offered to other plugins by the host)

log = logging.getLogger("librefang.runtime")
MIGRATIONS = Path(__file__).parent / "migrations"


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_runtime.config import RuntimeConfig, ToolInvokeConfig

    register("runtime", RuntimeConfig)
    register("tool_invoke", ToolInvokeConfig)
    from librefang_runtime.compactor import CompactionConfig

    register("compaction", CompactionConfig)


@librefang.hookimpl
def register_migrations(register: Any) -> None:
    register("runtime", MIGRATIONS)


@librefang.hookimpl
def register_routes(register: Any) -> None:
    from librefang_runtime import (
        openai_compat,
        routes,
        routes_sessions,
        routes_stats,
        routes_tools,
        routes_ws,
    )

    register(routes.router)
    register(routes_sessions.router)
    register(openai_compat.router)
    register(routes_tools.router)
    register(routes_ws.router)
    register(routes_stats.router)


def collect_tools(kernel: Any) -> Any:
    """The tool registry: the built-in tools, then every plugin's ``register_tools``. A plugin whose
    registration is refused loses its tools (logged); the others keep theirs."""
    from librefang_runtime.builtin_tools import builtin_tools
    from librefang_runtime.tools import ToolRegistry

    registry = ToolRegistry()
    for tool in builtin_tools():
        registry.register(tool, owner="runtime")

    def register(plugin: str, tool: Any) -> None:
        registry.register(tool, owner=plugin)

    kernel.plugins.call("register_tools", register=PluginBound(register), kernel=kernel)
    return registry


@librefang.hookimpl
def startup(kernel: Any) -> None:
    from librefang_runtime.modules import collect_modules
    from librefang_runtime.service import RuntimeService

    service = RuntimeService(kernel, kernel.config.section("runtime"), collect_tools(kernel))
    # Agents with module = "<scheme>:<target>" (wasm, ...) are answered by the plugin serving the scheme.
    service.modules = collect_modules(kernel)
    kernel.services["runtime"] = service


@librefang.hookimpl
async def shutdown(kernel: Any) -> None:
    runtime = kernel.services.pop("runtime", None)
    if runtime is not None:
        await runtime.aclose()

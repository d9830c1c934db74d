"""Wiring of the memory plugin (hooks only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import librefang

log = logging.getLogger("librefang.memory")
MIGRATIONS = Path(__file__).parent / "migrations"


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_memory.config import MemoryConfig, ProactiveMemoryConfig

    register("memory", MemoryConfig)
    register("proactive_memory", ProactiveMemoryConfig)


@librefang.hookimpl
def register_migrations(register: Any) -> None:
    register("memory", MIGRATIONS)


@librefang.hookimpl
def register_routes(register: Any) -> None:
    from librefang_memory import routes, routes_kv

    register(routes_kv.router)
    register(routes.router)


@librefang.hookimpl(optionalhook=True)  # offered by the runtime plugin, if loaded
def register_tools(register: Any) -> None:
    from librefang_memory.tools import memory_tools

    for tool in memory_tools():
        register(tool)


@librefang.hookimpl
async def startup(kernel: Any) -> None:
    from librefang_memory.pipeline import Pipeline
    from librefang_memory.service import MemoryService

    memory = MemoryService(kernel, kernel.config.section("memory"), kernel.config.section("proactive_memory"))
    await memory.open()
    memory.pipeline = Pipeline(memory)
    kernel.services["memory"] = memory
    kernel.tasks.spawn("memory", memory.access.run(), name="memory:access-flush")
    kernel.tasks.spawn("memory", memory.run_maintenance(), name="memory:maintenance")
    kernel.tasks.spawn("memory", memory.known_agents.follow(kernel.bus), name="memory:known-agents")


@librefang.hookimpl
async def shutdown(kernel: Any) -> None:
    memory = kernel.services.pop("memory", None)
    if memory is not None:
        try:
            await memory.access.flush()
        finally:
            if memory.pipeline is not None:
                memory.pipeline.close()
            memory.store.close()
            memory.semantic.close()


@librefang.hookimpl(optionalhook=True)  # offered by the runtime plugin, if loaded
async def before_prompt_build(kernel: Any, agent_id: str, message: str, incognito: bool) -> Any:
    memory = kernel.services.get("memory")
    if memory is None:
        return None
    return await memory.pipeline.recall(agent_id, message, incognito=incognito)


@librefang.hookimpl(optionalhook=True)  # offered by the runtime plugin, if loaded
async def after_turn(kernel: Any, turn: dict[str, Any]) -> None:
    memory = kernel.services.get("memory")
    if memory is not None:
        await memory.pipeline.after_turn(turn)

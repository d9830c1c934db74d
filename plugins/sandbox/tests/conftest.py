"""Fixtures for the sandbox tests: a kernel with agents, runtime and sandbox, agents, and a tool runner."""

from __future__ import annotations

from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import librefang_sandbox.plugin as sandbox_plugin
import pytest
from librefang_agents import api as agents_api
from librefang_runtime.api import ToolContext, runtime

AGENT = """name = "{name}"
[capabilities]
tools = {tools}
shell = {shell}
agent_message = ["*"]
"""


@pytest.fixture
def start_sandbox(make_kernel: Any) -> Any:
    """``await start_sandbox(config_toml)`` → a kernel running providers, agents, runtime and sandbox."""

    async def factory(config: str = "", extra_plugins: dict[str, Any] | None = None) -> Any:
        plugins = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin,
                   "sandbox": sandbox_plugin, **(extra_plugins or {})}
        kernel = await make_kernel(plugins=plugins, load_entry_points=False,
                                   config="[agents]\nspawn_default_agent = false\n" + config)
        for name in plugins:
            assert kernel.plugins.records[name].error is None, kernel.plugins.records[name].error
        return kernel

    return factory


@pytest.fixture
def agent() -> Any:
    """``await agent(kernel, "name", shell='["*"]', extra="", tools='["*"]')`` → a ToolContext for a new agent."""

    async def factory(kernel: Any, name: str, shell: str = '["*"]', extra: str = "", tools: str = '["*"]',
                      tables: str = "") -> ToolContext:
        record = await agents_api.registry(kernel).spawn_request(
            manifest_toml=extra + AGENT.format(name=name, shell=shell, tools=tools) + tables)
        workspace = agents_api.workspace_of(kernel, record)
        workspace.mkdir(parents=True, exist_ok=True)
        return ToolContext(kernel=kernel, agent_id=record.id, agent_name=record.name, session_id="s",
                           workspace=workspace)

    return factory


@pytest.fixture
def call() -> Any:
    """``await call(context, "tool", **input)``: run a registered tool's handler (errors raise ToolError)."""

    async def run(context: ToolContext, tool: str, **data: Any) -> str:
        return await runtime(context.kernel).tools.get(tool).handler(data, context)

    return run

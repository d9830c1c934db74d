"""The agent's [proactive_memory] overrides are read from its manifest once, not twice per turn, and a
change of the agent (announced on the bus) applies to the very next turn."""

from __future__ import annotations

from typing import Any

from librefang_agents import api as agents_api

from .conftest import AGENT


async def test_overrides_are_cached_and_dropped_when_the_agent_changes(env: Any, spawn: Any) -> None:
    kernel, _client = env
    toml = AGENT.format(name="quiet") + "[proactive_memory]\nauto_retrieve = false\n"
    agent_id = await spawn(kernel, "quiet", toml)
    pipeline = kernel.services["memory"].pipeline
    assert (await pipeline.config_for(agent_id)).auto_retrieve is False
    # the registry gone (it would give the global settings): the cached overrides still apply
    agents = kernel.services.pop("agents")
    try:
        assert (await pipeline.config_for(agent_id)).auto_retrieve is False
    finally:
        kernel.services["agents"] = agents
    # a manifest change through the registry (agent.config_changed) drops it at once
    def allow(data: dict[str, Any]) -> None:
        data["proactive_memory"] = {"auto_retrieve": True}

    await agents_api.registry(kernel).change(agent_id, allow)
    assert (await pipeline.config_for(agent_id)).auto_retrieve is True
    # the global [proactive_memory] still applies live under the cached overrides
    kernel.services["memory"].proactive = kernel.services["memory"].proactive.model_copy(update={"enabled": False})
    assert (await pipeline.config_for(agent_id)).enabled is False

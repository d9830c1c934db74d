"""Fixtures for the runtime tests: the fake LLM server, kernels aimed at it, agents and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from librefang_agents import api as agents_api
from librefang_providers.api import get_registry
from librefang_runtime.builtin_tools import builtin_tools
from librefang_runtime.loop import AgentLoop, LoopSettings
from librefang_runtime.tools import ToolContext, ToolRegistry

from tests.fakes.llm_server import FakeLLMServer

TEST_KEY = "sk-runtime-test-0123456789"
AGENT = """name = "{name}"
description = "runtime test agent"
[model]
provider = "openai"
model = "fake-model"
system_prompt = "You are a careful test agent."
"""


def config_for(fake: FakeLLMServer, extra: str = "") -> str:
    return (
        "[agents]\nspawn_default_agent = false\n"
        "[providers]\nretry_base_delay_ms = 5\n"
        f'provider_urls = {{ openai = "{fake.base_url("openai")}", anthropic = "{fake.base_url("anthropic")}" }}\n'
        + extra
    )


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    """A fake provider server on a free loopback port (in the test's event loop)."""
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)


@pytest.fixture
def start_runtime(make_kernel: Any, fake_llm: FakeLLMServer, keys: None) -> Any:
    """``await start_runtime(extra_config="", plugins={...}, database_url=None)`` → (kernel, client) with
    providers, agents and runtime (plus ``plugins``) aimed at the fake LLM server."""

    async def factory(extra_config: str = "", plugins: dict[str, Any] | None = None,
                      database_url: str | None = None) -> tuple[Any, Any]:
        loaded = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin,
                  **(plugins or {})}
        config = (f'database_url = "{database_url}"\n' if database_url else "") + config_for(fake_llm, extra_config)
        kernel = await make_kernel(plugins=loaded, load_entry_points=False, config=config)
        for name in ("providers", "agents", "runtime"):
            assert kernel.plugins.records[name].error is None, kernel.plugins.records[name].error
        return kernel, make_client(build_app(kernel))

    return factory


@pytest.fixture
async def runtime_env(start_runtime: Any) -> tuple[Any, Any]:
    return await start_runtime()


@pytest.fixture
def spawn() -> Any:
    """``await spawn(kernel, "name", toml=None)`` → the new agent's id."""

    async def factory(kernel: Any, name: str, toml: str | None = None) -> str:
        record = await agents_api.registry(kernel).spawn_request(manifest_toml=toml or AGENT.format(name=name))
        return record.id

    return factory


@pytest.fixture
async def llm_kernel(make_kernel: Any, fake_llm: FakeLLMServer, keys: None) -> Any:
    """A kernel running only the providers plugin (for loop tests that need no agent)."""
    return await make_kernel(plugins={"providers": providers_plugin}, load_entry_points=False,
                             config=config_for(fake_llm))


@pytest.fixture
def make_loop(llm_kernel: Any, tmp_path: Path) -> Any:
    """``make_loop(tools=[...], **settings)`` → (loop, committed messages list) over the fake server."""

    def factory(tools: list[Any] | None = None, allowed: list[str] | None = None, policy: Any = None,
                events: list[Any] | None = None, **settings: Any) -> tuple[AgentLoop, list[Any]]:
        registry = ToolRegistry()
        for tool in [*builtin_tools(), *(tools or [])]:
            registry.register(tool, owner="test")
        workspace = tmp_path / "workspace"
        workspace.mkdir(exist_ok=True)
        context = ToolContext(kernel=llm_kernel, agent_id="a", agent_name="tester", session_id="s",
                              workspace=workspace)
        committed: list[Any] = []

        async def commit(message: Any) -> None:
            committed.append(message)

        async def emit(event: Any) -> None:
            if events is not None:
                events.append(event)

        settings.setdefault("provider", "openai")
        settings.setdefault("model", "fake-model")
        loop = AgentLoop(get_registry(llm_kernel), registry, LoopSettings(**settings), context,
                         allowed_tools=allowed if allowed is not None else registry.names(), policy=policy,
                         emit=emit, commit=commit)
        return loop, committed

    return factory

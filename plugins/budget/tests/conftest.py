"""Fixtures for the budget tests: the fake LLM server, a kernel with providers, agents, runtime and
budget aimed at it, agents, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from librefang_agents import api as agents_api

from tests.fakes.llm_server import FakeLLMServer

TEST_KEY = "sk-budget-test-0123456789"
AGENT = """name = "{name}"
description = "budget test agent"
[model]
provider = "openai"
model = "fake-model"
"""


def config_for(fake: FakeLLMServer, extra: str = "", top: str = "") -> str:
    return (
        top + "[agents]\nspawn_default_agent = false\n"
        "[providers]\nretry_base_delay_ms = 5\n"
        f'provider_urls = {{ openai = "{fake.base_url("openai")}", anthropic = "{fake.base_url("anthropic")}" }}\n'
        + extra
    )


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
def start(make_kernel: Any, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``await start(extra_config="", plugins={...}, budget=True, top="")`` → (kernel, client); ``top`` holds
    top-level config keys."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)

    async def factory(extra_config: str = "", plugins: dict[str, Any] | None = None,
                      budget: bool = True, top: str = "") -> tuple[Any, Any]:
        loaded: dict[str, Any] = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin}
        if budget:
            import librefang_budget.plugin as budget_plugin

            loaded["budget"] = budget_plugin
        loaded.update(plugins or {})
        kernel = await make_kernel(plugins=loaded, load_entry_points=False, config=config_for(fake_llm, extra_config, top))
        for name in loaded:
            assert kernel.plugins.records[name].error is None, kernel.plugins.records[name].error
        return kernel, make_client(build_app(kernel))

    return factory


@pytest.fixture
def spawn() -> Any:
    """``await spawn(kernel, "name", extra_toml="", toml=None)`` → the new agent's id."""

    async def factory(kernel: Any, name: str, extra_toml: str = "", toml: str | None = None) -> str:
        text = toml if toml is not None else AGENT.format(name=name) + extra_toml
        record = await agents_api.registry(kernel).spawn_request(manifest_toml=text)
        return record.id

    return factory

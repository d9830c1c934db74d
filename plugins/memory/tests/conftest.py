"""Fixtures for the memory tests: kernels with providers, agents, runtime and memory (aimed at the
fake LLM server), an in-process client, and agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_memory.plugin as memory_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from librefang_agents import api as agents_api

from tests.fakes.llm_server import FakeLLMServer

TEST_KEY = "sk-memory-test-0123456789"
AGENT = """name = "{name}"
description = "memory test agent"
[model]
provider = "openai"
model = "fake-model"
system_prompt = "You are a careful test agent."
"""
PLUGINS = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin,
           "memory": memory_plugin}


def config_for(fake: FakeLLMServer, extra: str = "") -> str:
    return (
        "[agents]\nspawn_default_agent = false\n"
        "[providers]\nretry_base_delay_ms = 5\n"
        f'provider_urls = {{ openai = "{fake.base_url("openai")}" }}\n'
        + extra
    )


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
def start_memory(make_kernel: Any, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``await start_memory(extra_config="", top="")`` → (kernel, client); ``top`` holds top-level keys."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)

    async def factory(extra_config: str = "", home: Any = None, top: str = "") -> tuple[Any, Any]:
        kernel = await make_kernel(plugins=dict(PLUGINS), load_entry_points=False,
                                   config=top + config_for(fake_llm, extra_config), home=home)
        for name in PLUGINS:
            assert kernel.plugins.records[name].error is None, kernel.plugins.records[name].error
        return kernel, make_client(build_app(kernel))

    return factory


@pytest.fixture
async def env(start_memory: Any) -> tuple[Any, Any]:
    return await start_memory("[memory]\nembeddings = \"off\"\n")


@pytest.fixture
def spawn() -> Any:
    """``await spawn(kernel, "name", toml=None)`` → the new agent's id."""

    async def factory(kernel: Any, name: str, toml: str | None = None) -> str:
        record = await agents_api.registry(kernel).spawn_request(manifest_toml=toml or AGENT.format(name=name))
        return record.id

    return factory

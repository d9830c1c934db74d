"""Fixtures for the taint tests: the fake LLM server and a kernel with providers, agents, runtime and
taint aimed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import librefang_taint.plugin as taint_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from librefang_agents import api as agents_api

from tests.fakes.llm_server import FakeLLMServer

MANIFEST = """name = "{name}"
[model]
provider = "openai"
model = "fake-model"
[capabilities]
tools = ["*"]
agent_message = ["*"]
network = ["*"]
"""


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
def start(make_kernel: Any, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``await start(extra_config="", plugins={...})`` → (kernel, client)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-taint-test-0123456789abcdef")

    async def factory(extra_config: str = "", plugins: dict[str, Any] | None = None) -> tuple[Any, Any]:
        loaded = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin,
                  "taint": taint_plugin, **(plugins or {})}
        config = ("[agents]\nspawn_default_agent = false\n[providers]\nretry_base_delay_ms = 5\n"
                  f'provider_urls = {{ openai = "{fake_llm.base_url("openai")}" }}\n' + extra_config)
        kernel = await make_kernel(plugins=loaded, load_entry_points=False, config=config)
        for name in loaded:
            assert kernel.plugins.records[name].error is None, kernel.plugins.records[name].error
        return kernel, make_client(build_app(kernel))

    return factory


@pytest.fixture
def spawn() -> Any:
    async def factory(kernel: Any, name: str) -> str:
        record = await agents_api.registry(kernel).spawn_request(manifest_toml=MANIFEST.format(name=name))
        return record.id

    return factory

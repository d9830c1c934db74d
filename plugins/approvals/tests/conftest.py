"""Fixtures for the approvals tests: a kernel with providers, agents, runtime and approvals aimed at
the fake LLM server, an in-process client, and a settable clock for TOTP time steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_approvals.plugin as approvals_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from librefang_agents import api as agents_api

from tests.fakes.llm_server import FakeLLMServer

TEST_KEY = "sk-approvals-test-0123456789"
AGENT = """name = "{name}"
description = "approvals test agent"
[model]
provider = "openai"
model = "fake-model"
"""


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


class Clock:
    """A settable wall clock (seconds since the epoch)."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def start(make_kernel: Any, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``await start(extra_config="")`` → (kernel, client) with the four plugins."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)

    async def factory(extra_config: str = "", plugins: dict[str, Any] | None = None) -> tuple[Any, Any]:
        loaded = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin,
                  "approvals": approvals_plugin, **(plugins or {})}
        kernel = await make_kernel(plugins=loaded, load_entry_points=False, config=config_for(fake_llm, extra_config))
        for name in loaded:
            assert kernel.plugins.records[name].error is None, kernel.plugins.records[name].error
        return kernel, make_client(build_app(kernel))

    return factory


@pytest.fixture
def spawn() -> Any:
    """``await spawn(kernel, "name")`` → the new agent's id."""

    async def factory(kernel: Any, name: str) -> str:
        record = await agents_api.registry(kernel).spawn_request(manifest_toml=AGENT.format(name=name))
        return record.id

    return factory


@pytest.fixture
def clock() -> Clock:
    """A settable clock; tests hand it to the TOTP store to step through time steps."""
    return Clock()

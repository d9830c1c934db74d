"""Fixtures for the agents plugin tests: a kernel with only this plugin loaded, and its client."""

from __future__ import annotations

from typing import Any

import librefang_agents.plugin as agents_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client

HELLO = 'name = "{name}"\ndescription = "test agent"\n[model]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'


@pytest.fixture
def start_agents(make_kernel: Any) -> Any:
    """``await start_agents(config="...")`` → (kernel, client) with only the agents plugin."""

    async def factory(config: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
        kernel = await make_kernel(plugins={"agents": agents_plugin}, load_entry_points=False, config=config, **kwargs)
        assert kernel.plugins.records["agents"].error is None, kernel.plugins.records["agents"].error
        return kernel, make_client(build_app(kernel))

    return factory


@pytest.fixture
async def agents_kernel(start_agents: Any) -> Any:
    kernel, _ = await start_agents()
    return kernel


@pytest.fixture
def client(agents_kernel: Any) -> Any:
    """In-process client of a kernel running only the agents plugin (overrides the core fixture)."""
    return make_client(build_app(agents_kernel))


async def _spawn(client: Any, name: str, toml: str | None = None, **extra: Any) -> str:
    body = {"manifest_toml": toml if toml is not None else HELLO.format(name=name), **extra}
    response = await client.post("/api/agents", json=body)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return (await response.get_json())["agent_id"]


@pytest.fixture
def spawn() -> Any:
    """``await spawn(client, "name", toml=None, **extra)`` spawns over HTTP and returns the id."""
    return _spawn


@pytest.fixture
def hello() -> str:
    """A manifest template: ``hello.format(name="x")``."""
    return HELLO

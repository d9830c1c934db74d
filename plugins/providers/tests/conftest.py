"""Fixtures for the providers plugin tests: the fake LLM server and drivers pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from librefang_providers.drivers import BUILTIN_FORMATS
from librefang_providers.types import DriverConfig

from tests.fakes.llm_server import FakeLLMServer

FORMATS = ("openai", "anthropic", "gemini", "ollama")
TEST_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLMServer]:
    """A fake provider server on a free loopback port (in the test's event loop)."""
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def make_driver(fake_llm: FakeLLMServer) -> AsyncIterator[Callable[..., Any]]:
    """``make_driver("anthropic", stream_idle_timeout=0.3)``: a built-in driver aimed at the fake."""
    drivers: list[Any] = []

    def factory(fmt: str, **config: Any) -> Any:
        config.setdefault("api_key", TEST_KEY)
        driver = BUILTIN_FORMATS[fmt](DriverConfig(provider=f"fake-{fmt}", base_url=fake_llm.base_url(fmt), **config))
        drivers.append(driver)
        return driver

    yield factory
    for driver in drivers:
        await driver.aclose()

"""Tests of the example plugin. They use the fixtures the core ships (``make_kernel``,
``librefang_home``) and load the plugin in-process, so they run before it is even installed."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner
from librefang.app import build_app
from librefang.errors import ConfigError
from librefang.testing import make_client, write_config
from librefang_example import api, plugin
from librefang_example.commands import example_greet


async def start(make_kernel, config: str = ""):
    kernel = await make_kernel(plugins={"example": plugin}, load_entry_points=False, config=config)
    return kernel, make_client(build_app(kernel))


async def test_greeting_uses_the_config_section(make_kernel):
    _kernel, client = await start(make_kernel, '[example]\ngreeting = "Ahoy"\n')
    response = await client.get("/api/example/greeting?name=Ada")
    assert response.status_code == 200
    assert await response.get_json() == {"text": "Ahoy, Ada!"}


async def test_bad_query_is_400(make_kernel):
    _kernel, client = await start(make_kernel)
    response = await client.get("/api/example/greeting?name=" + "x" * 65)
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "invalid_query"


async def test_echo_publishes_an_event_the_background_task_counts(make_kernel):
    kernel, client = await start(make_kernel)
    response = await client.post("/api/example/echo", json={"text": "hi there"})
    assert await response.get_json() == {"text": "hi there", "length": 8}
    for _ in range(100):  # the owned task picks the event up from the bus
        stats = await (await client.get("/api/example/stats")).get_json()
        if stats["events_seen"]:
            break
        await asyncio.sleep(0.01)
    assert stats == {"echoes": 1, "events_seen": 1}
    assert api.echo_count(kernel) == 1
    assert (await (await client.get("/api/status")).get_json())["example_echoes"] == 1


async def test_echo_refuses_text_over_the_configured_limit(make_kernel):
    _kernel, client = await start(make_kernel, "[example]\nmax_echo_chars = 5\n")
    response = await client.post("/api/example/echo", json={"text": "too long"})
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "text_too_long"
    missing = await client.post("/api/example/echo", json={})
    assert missing.status_code == 400


async def test_bad_config_value_stops_the_start_naming_the_key(make_kernel):
    with pytest.raises(ConfigError, match=r"example\.max_echo_chars"):
        await start(make_kernel, "[example]\nmax_echo_chars = 0\n")


async def test_shutdown_stops_what_startup_started(make_kernel):
    kernel, _client = await start(make_kernel)
    assert kernel.tasks.count("example") == 1
    await kernel.stop()
    assert kernel.tasks.count("example") == 0
    assert "example" not in kernel.services


def test_cli_command_reads_the_config(librefang_home):
    write_config(librefang_home, '[example]\ngreeting = "Hi"\n')
    result = CliRunner().invoke(example_greet, ["Bob"])
    assert result.exit_code == 0, result.output
    assert result.output == "Hi, Bob!\n"

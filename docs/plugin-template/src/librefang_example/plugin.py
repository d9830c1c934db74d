"""Wiring of the example plugin: hooks only (the entry point names this module)."""

from __future__ import annotations

from typing import Any

from librefang import hookimpl

from librefang_example import commands, routes
from librefang_example.config import ExampleConfig
from librefang_example.service import SERVICE_KEY, ExampleService


@hookimpl
def register_config(register: Any) -> None:
    register("example", ExampleConfig)


@hookimpl
def register_routes(register: Any) -> None:
    register(routes.router)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(commands.example_greet)


@hookimpl
async def startup(kernel: Any) -> None:
    service = ExampleService(kernel)
    kernel.services[SERVICE_KEY] = service
    kernel.tasks.spawn("example", service.count_events(), name="example:count-events")


@hookimpl
def shutdown(kernel: Any) -> None:
    # The host cancels the count-events task after this returns.
    kernel.services.pop(SERVICE_KEY, None)


@hookimpl
def status_info(kernel: Any) -> dict[str, Any] | None:
    service = kernel.services.get(SERVICE_KEY)
    return {"example_echoes": service.echoes} if service is not None else None

"""Wiring of the agents plugin (hooks only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import librefang
from librefang.errors import PluginError

MIGRATIONS = Path(__file__).parent / "migrations"


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_agents.config import AgentsConfig

    register("agents", AgentsConfig)


@librefang.hookimpl
def register_migrations(register: Any) -> None:
    register("agents", MIGRATIONS)


@librefang.hookimpl
def register_routes(register: Any) -> None:
    from librefang_agents import routes, routes_workspace

    register(routes.router)
    register(routes_workspace.router)


@librefang.hookimpl
def register_commands(cli: Any) -> None:
    from librefang_agents.cli import agent

    cli.add_command(agent)


@librefang.hookimpl
async def startup(kernel: Any) -> None:
    from librefang_agents.files import FilesService
    from librefang_agents.service import AgentService
    from librefang_agents.signing import parse_trusted_signers

    try:
        trusted = parse_trusted_signers(kernel.config.raw.get("trusted_manifest_signers"))
    except ValueError as exc:
        raise PluginError(f"invalid configuration: {exc}") from None
    service = AgentService(kernel, kernel.config.section("agents"), trusted)
    kernel.services["agents"] = service
    kernel.services["agents.files"] = FilesService(service)
    await service.open()
    await service.ensure_default_agent()


@librefang.hookimpl
def shutdown(kernel: Any) -> None:
    kernel.services.pop("agents", None)
    kernel.services.pop("agents.files", None)


@librefang.hookimpl
async def status_info(kernel: Any) -> dict[str, int] | None:
    service = kernel.services.get("agents")
    return await service.counts() if service is not None else None


@librefang.hookimpl
def security_checks(register: Any) -> None:
    def manifest_signing(kernel: Any) -> dict[str, Any]:
        service = kernel.services.get("agents")
        if service is None:
            return {"enabled": False}
        return {
            "enabled": bool(service.trusted_signers),
            "algorithm": "Ed25519",
            "trusted_signers": len(service.trusted_signers),
            "required_for_spawn": service.config.require_signed_manifests,
        }

    def capability_inheritance(kernel: Any) -> dict[str, Any]:
        return {"enabled": True, "rule": "a child agent never holds a capability its parent lacks"}

    register("manifest_signing", manifest_signing)
    register("capability_inheritance", capability_inheritance)

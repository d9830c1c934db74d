"""Wiring of the approvals plugin (hooks only)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import librefang

log = logging.getLogger("librefang.approvals")
MIGRATIONS = Path(__file__).parent / "migrations"
SWEEP_SECS = 30.0
TRIM_EVERY = 120  # sweeps between retention trims (about an hour)


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_approvals.config import ApprovalConfig

    register("approval", ApprovalConfig)


@librefang.hookimpl
def register_migrations(register: Any) -> None:
    register("approvals", MIGRATIONS)


@librefang.hookimpl
def register_routes(register: Any) -> None:
    from librefang_approvals import routes, routes_totp

    register(routes.router)
    register(routes_totp.router)


@librefang.hookimpl
def register_commands(cli: Any) -> None:
    from librefang_approvals.cli import approvals

    cli.add_command(approvals)


@librefang.hookimpl
async def status_info(kernel: Any) -> dict[str, int] | None:
    service = kernel.services.get("approvals")
    return {"pending_approvals": await service.count_pending()} if service is not None else None


@librefang.hookimpl
def security_checks(register: Any) -> None:
    register("tool_approvals", approvals_security)


async def approvals_security(kernel: Any) -> dict[str, Any]:
    """The gate's real configuration and state for ``GET /api/security``."""
    service = kernel.services["approvals"]
    config = service.config()
    totp = await service.totp.status()
    # The gate only protects anything when a loaded plugin (the runtime) offers and calls before_tool_call.
    caller = getattr(kernel.plugins.pm.hook, "before_tool_call", None)
    hooked = caller is not None and caller.spec is not None
    return {
        "active": hooked and bool(config.require_approval) and not config.auto_approve,
        "hooked_into_runtime": hooked,
        "require_approval": config.require_approval,
        "auto_approve": config.auto_approve,
        "timeout_secs": config.timeout_secs,
        "timeout_fallback": config.timeout_fallback,
        "max_pending_per_agent": config.max_pending_per_agent,
        "pending": await service.count_pending(),
        "second_factor": config.second_factor,
        "totp_tools": (config.totp_tools or ["*"]) if config.second_factor == "totp" else [],
        "totp_confirmed": totp["confirmed"],
        "totp_lockout": {"max_failures": config.totp_max_failures, "lockout_secs": config.totp_lockout_secs},
        "totp_secret_store": "kernel vault",
        "recovery_codes_remaining": totp["remaining_recovery_codes"],
    }


# optionalhook: the spec comes from the runtime plugin; without it there are no tool calls to gate.
# trylast: a person is asked only about calls every automated check (taint, budget, ...) let through.
@librefang.hookimpl(optionalhook=True, trylast=True)
async def before_tool_call(call: Any, context: Any) -> Any:
    from librefang_approvals.gate import check

    service = context.kernel.services.get("approvals") if context.kernel is not None else None
    if service is None:
        # Installed but not started (failed startup): refuse what would have been gated. The config
        # section may be gone with the failed plugin, so fall back to the defaults.
        from librefang_runtime.api import Deny

        from librefang_approvals.config import DEFAULT_GATED
        from librefang_approvals.service import matches

        if matches(call.name, DEFAULT_GATED):
            return Deny("the approvals service is not running", status="denied")
        return None
    return await check(service, call, context)


async def _sweep(service: Any) -> None:
    """Time out overdue requests nobody waits for and trim old decided ones."""
    rounds = 0
    while True:
        await asyncio.sleep(SWEEP_SECS)
        try:
            await service.expire_overdue()
            rounds += 1
            if rounds % TRIM_EVERY == 1:
                await service.trim(service.config().audit_retention_days)
        except Exception:  # noqa: BLE001 - the sweeper must outlive a transient database error
            log.exception("approvals sweep failed")


@librefang.hookimpl
def startup(kernel: Any) -> None:
    from librefang_approvals.service import ApprovalService

    service = ApprovalService(kernel, lambda: kernel.config.section("approval"))
    kernel.services["approvals"] = service
    kernel.tasks.spawn("approvals", _sweep(service), name="approvals:sweep")


@librefang.hookimpl
def shutdown(kernel: Any) -> None:
    kernel.services.pop("approvals", None)

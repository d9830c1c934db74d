"""Wiring of the budget plugin (hooks only)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import librefang

log = logging.getLogger("librefang.budget")
MIGRATIONS = Path(__file__).parent / "migrations"
RETENTION_INTERVAL_SECS = 3600.0


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_budget.config import BudgetConfig

    register("budget", BudgetConfig)


@librefang.hookimpl
def register_migrations(register: Any) -> None:
    register("budget", MIGRATIONS)


@librefang.hookimpl
def register_routes(register: Any) -> None:
    from librefang_budget.routes import router

    register(router)


async def _retention(kernel: Any) -> None:
    # Usage records are kept for [budget] retention_days (at least a month: the monthly window).
    while True:
        service = kernel.services.get("budget")
        if service is not None:
            days = service.config.retention_days
            try:
                removed = await service.store.trim(time.time() - days * 86400.0)
                if removed:
                    log.info("budget retention removed %d usage records older than %d days", removed, days)
            except Exception as exc:  # noqa: BLE001 - retry at the next interval
                log.warning("budget retention failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(RETENTION_INTERVAL_SECS)


@librefang.hookimpl
def startup(kernel: Any) -> None:
    from librefang_budget.service import SERVICE_KEY, BudgetService

    kernel.services[SERVICE_KEY] = BudgetService(kernel)
    kernel.tasks.spawn("budget", _retention(kernel), name="budget:retention")


@librefang.hookimpl
async def shutdown(kernel: Any) -> None:
    service = kernel.services.pop("budget", None)
    if service is not None:
        service.close()
        await service.drain()  # rows of cancelled callers are still written


# optionalhook: the plugin still loads (and serves its API) when the runtime is not installed.
@librefang.hookimpl(optionalhook=True)
async def before_llm_call(kernel: Any, call: dict[str, Any]) -> None:
    from librefang.errors import ApiError, ServiceUnavailable

    service = kernel.services.get("budget")
    if service is None:
        return
    try:
        await service.check(call)
    except ApiError:
        raise
    except Exception as exc:  # fail closed, but as a clear 503 rather than an internal error
        log.error("budget check failed: %s: %s", type(exc).__name__, exc)
        raise ServiceUnavailable("the budget check could not read the spend; the call was not made",
                                 code="budget_check_failed") from None


@librefang.hookimpl(optionalhook=True)
async def after_llm_call(kernel: Any, call: dict[str, Any]) -> None:
    service = kernel.services.get("budget")
    if service is not None:
        await service.meter(call)


@librefang.hookimpl
async def status_info(kernel: Any) -> dict[str, Any] | None:
    """``budget`` in ``GET /api/status``: spend, cap and share of the cap per window (null when uncapped)."""
    service = kernel.services.get("budget")
    if service is None:
        return None
    status = await service.global_status()
    block: dict[str, Any] = {"alert_threshold": status["alert_threshold"]}
    for window in ("hourly", "daily", "monthly"):
        limit = status[f"{window}_limit"]
        block[f"{window}_spend_usd"] = status[f"{window}_spend"]
        block[f"{window}_limit_usd"] = limit if limit > 0 else None
        block[f"{window}_spend_percent"] = round(status[f"{window}_pct"] * 100, 3) if limit > 0 else None
    return {"budget": block}


@librefang.hookimpl
def security_checks(register: Any) -> None:
    register("budget", _security)


def _security(kernel: Any) -> dict[str, Any]:
    service = kernel.services.get("budget")
    config = kernel.config.section("budget")
    caps = {"max_hourly_usd": config.max_hourly_usd, "max_daily_usd": config.max_daily_usd,
            "max_monthly_usd": config.max_monthly_usd,
            "default_max_llm_tokens_per_hour": config.default_max_llm_tokens_per_hour}
    # Active only when a loaded plugin (the runtime) offers the hooks, i.e. really calls them.
    caller = getattr(kernel.plugins.pm.hook, "before_llm_call", None)
    hooked = caller is not None and caller.spec is not None and bool(kernel.plugins.impls("before_llm_call", "budget"))
    return {
        "active": hooked,
        "enforcement": "before every LLM call of an agent turn (429 budget_exceeded)",
        "metering": "every LLM call of an agent turn: tokens, cache tokens, cost, latency, provider, model",
        "runtime_hooks": hooked,
        "global_caps": caps,
        "provider_caps": {name: budget.model_dump() for name, budget in sorted(config.providers.items())},
        "alert_threshold": config.alert_threshold,
        "fallback_prices_per_million": {"input": config.fallback_input_cost_per_m,
                                        "output": config.fallback_output_cost_per_m},
        "retention_days": config.retention_days,
        "calls_metered": service.metered if service else 0,
        "calls_refused": service.refused if service else 0,
        "alerts_raised": service.alerts_raised if service else 0,
    }

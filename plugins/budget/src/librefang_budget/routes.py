"""Budget and Usage routes (thin: the logic is in service.py, analytics.py and persist.py).

Rate-limit costs follow the reference table (``librefang.ratelimit.route_cost``): 3 for ``GET /api/usage``,
5 for every other route here.
"""

from __future__ import annotations

import re
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import BadRequest

from librefang_budget import analytics
from librefang_budget.persist import persist_budget
from librefang_budget.schemas import (
    AgentBudgetRanking,
    AgentBudgetStatus,
    AgentBudgetUpdate,
    BudgetStatus,
    BudgetUpdate,
    PageQuery,
    PerformanceByModel,
    ProviderBudgets,
    ProviderBudgetUpdate,
    StatusMessage,
    UsageByModel,
    UsageDaily,
    UsagePage,
    UsageSummary,
)
from librefang_budget.service import SERVICE_KEY, BudgetService
from librefang_budget.store import Windows

PROVIDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
ALIASES = (("max_hourly_usd", "hourly_limit"), ("max_daily_usd", "daily_limit"), ("max_monthly_usd", "monthly_limit"))

router = Router("budget", tags=("budget",))


def service() -> BudgetService:
    return current_kernel().services[SERVICE_KEY]


def _actor() -> tuple[str, str]:
    from quart import g

    return getattr(g, "principal", "api"), getattr(g, "request_id", "")


async def _audit(target: str, detail: dict[str, Any]) -> None:
    actor, request_id = _actor()
    await current_kernel().audit.record("ConfigChange", actor=actor, target=target, detail=detail,
                                        request_id=request_id)


def _given(body: Any) -> dict[str, Any]:
    values = {k: v for k, v in body.model_dump().items() if v is not None}
    if not values:
        raise BadRequest("give at least one budget field to change", code="empty_update")
    return values


@router.get("/api/budget", cost=5, response=BudgetStatus)
async def budget_status() -> dict[str, Any]:
    """Global budget status: spend, cap and spend/cap per window (hourly, daily, monthly)."""
    return await service().global_status()


@router.put("/api/budget", cost=5, body=BudgetUpdate, response=BudgetStatus)
async def update_budget(body: BudgetUpdate) -> dict[str, Any]:
    """Change global caps, the alert threshold or the default token cap; persisted to config.toml."""
    given = body.model_dump(exclude_none=True)
    updates: dict[str, Any] = {}
    for canonical, alias in ALIASES:
        value = given.get(canonical, given.get(alias))
        if value is not None:
            updates[canonical] = float(value)
    for key in ("alert_threshold", "default_max_llm_tokens_per_hour"):
        if key in given:
            updates[key] = given[key]
    if not updates:
        raise BadRequest("give at least one of max_hourly_usd, max_daily_usd, max_monthly_usd (or hourly_limit, "
                         "daily_limit, monthly_limit), alert_threshold, default_max_llm_tokens_per_hour",
                         code="empty_update")
    await persist_budget(current_kernel(), updates)
    await _audit("budget", updates)
    current_kernel().bus.publish("budget.updated", {"scope": "global", **updates}, source="budget")
    return await service().global_status()


@router.get("/api/budget/agents", cost=5, query=PageQuery, response=AgentBudgetRanking)
async def agent_budget_ranking(query: PageQuery) -> dict[str, Any]:
    """Agents by today's spend (agents with spend this month or caps set through this API)."""
    svc = service()
    w = Windows.at()
    spend = await svc.store.spend_by("agent_id", w)
    overridden = await svc.store.all_agent_limits()
    ids = sorted(set(spend) | set(overridden), key=lambda a: (-spend[a].daily if a in spend else 0.0, a))
    items = []
    for agent_id in ids[query.offset: query.offset + query.limit]:
        try:
            record = await svc.agent_record(agent_id)
        except Exception:  # noqa: BLE001 - a killed agent keeps its spend in the ranking
            record = None
        caps = await svc.agent_caps(agent_id, record)
        items.append({
            "agent_id": agent_id, "name": record.name if record is not None else "",
            "daily_cost_usd": round(spend[agent_id].daily, 6) if agent_id in spend else 0.0,
            "hourly_limit": caps["max_cost_per_hour_usd"], "daily_limit": caps["max_cost_per_day_usd"],
            "monthly_limit": caps["max_cost_per_month_usd"], "max_llm_tokens_per_hour": int(caps["max_llm_tokens_per_hour"]),
        })
    return {"items": items, "total": len(ids), "offset": query.offset, "limit": query.limit}


@router.get("/api/budget/agents/<agent_id>", cost=5, response=AgentBudgetStatus)
async def agent_budget_status(agent_id: str) -> dict[str, Any]:
    """One agent's spend and caps per window, and its LLM tokens in the last hour."""
    return await service().agent_status(agent_id)


@router.put("/api/budget/agents/<agent_id>", cost=5, body=AgentBudgetUpdate, response=StatusMessage)
async def update_agent_budget(agent_id: str, body: AgentBudgetUpdate) -> dict[str, Any]:
    """Set per-agent caps (stored in the database; they override the manifest's [resources])."""
    values = _given(body)
    svc = service()
    record = await svc.agent_record(agent_id)
    await svc.set_overrides(record.id, values)
    await _audit(f"budget:agent:{record.id}", values)
    current_kernel().bus.publish("budget.updated", {"scope": "agent", "agent_id": record.id, **values}, source="budget")
    return {"status": "ok", "message": f"budget of agent {record.name!r} updated: "
            + ", ".join(f"{k}={v}" for k, v in sorted(values.items()))}


@router.get("/api/budget/providers", cost=5, response=ProviderBudgets)
async def provider_budget_list() -> dict[str, Any]:
    """Per-provider caps and spend: providers with a cap and providers used this month."""
    rows = await service().provider_rows()
    return {"providers": rows, "total": len(rows)}


@router.put("/api/budget/providers/<provider_id>", cost=5, body=ProviderBudgetUpdate, response=ProviderBudgets)
async def update_provider_budget(provider_id: str, body: ProviderBudgetUpdate) -> dict[str, Any]:
    """Upsert per-provider caps in [budget.providers.<id>] of config.toml (partial)."""
    if not PROVIDER_ID.match(provider_id):
        raise BadRequest("provider id must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)",
                         code="invalid_provider_id")
    values = _given(body)
    await persist_budget(current_kernel(), values, provider=provider_id)
    await _audit(f"budget:provider:{provider_id}", values)
    current_kernel().bus.publish("budget.updated", {"scope": "provider", "provider": provider_id, **values},
                                 source="budget")
    rows = [r for r in await service().provider_rows() if r["provider"] == provider_id]
    return {"providers": rows, "total": len(rows)}


@router.get("/api/usage", cost=3, query=PageQuery, response=UsagePage)
async def usage_stats(query: PageQuery) -> dict[str, Any]:
    """Usage per agent (tokens, cost, calls, tool calls), biggest spender first."""
    items, total = await analytics.per_agent(current_kernel().db, query.offset, query.limit)
    return {"items": items, "total": total, "offset": query.offset, "limit": query.limit}


@router.get("/api/usage/summary", cost=5, response=UsageSummary)
async def usage_summary() -> dict[str, Any]:
    """Totals over every metered LLM call."""
    return await analytics.summary(current_kernel().db)


@router.get("/api/usage/by-model", cost=5, response=UsageByModel)
async def usage_by_model() -> dict[str, Any]:
    """Usage grouped by model, most expensive first."""
    return {"models": await analytics.by_model(current_kernel().db)}


@router.get("/api/usage/by-model/performance", cost=5, response=PerformanceByModel)
async def usage_by_model_performance() -> dict[str, Any]:
    """Usage by model with latency statistics (average, minimum, maximum) and cost per call."""
    return {"models": await analytics.by_model(current_kernel().db, performance=True)}


@router.get("/api/usage/daily", cost=5, response=UsageDaily)
async def usage_daily() -> dict[str, Any]:
    """Cost, tokens and calls of each of the last 7 UTC days (today last)."""
    return await analytics.daily(current_kernel().db)

"""Usage analytics over ``budget_usage``: per agent, totals, per model (with latency), per day."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from librefang_budget.models import usage
from librefang_budget.store import DAY, Windows

c = usage.c


def _sums() -> list[Any]:
    return [
        sa.func.coalesce(sa.func.sum(c.input_tokens), 0), sa.func.coalesce(sa.func.sum(c.output_tokens), 0),
        sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0), sa.func.count(c.id), sa.func.coalesce(sa.func.sum(c.tool_calls), 0),
    ]


async def per_agent(db: Any, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Usage per agent, biggest spender first, and how many agents have usage."""
    cost = sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0)
    query = (sa.select(c.agent_id, sa.func.max(c.agent_name), *_sums()).group_by(c.agent_id)
             .order_by(cost.desc(), c.agent_id).offset(offset).limit(limit))
    async with db.begin() as conn:
        rows = (await conn.execute(query)).all()
        total = (await conn.execute(sa.select(sa.func.count(sa.distinct(c.agent_id))))).scalar_one()
    items = []
    for agent_id, name, input_tokens, output_tokens, spent, calls, tool_calls in rows:
        items.append({
            "agent_id": agent_id, "name": name or "", "is_hand": False,
            "total_tokens": int(input_tokens) + int(output_tokens), "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens), "total_cost_usd": round(float(spent), 6), "cost": round(float(spent), 6),
            "call_count": int(calls), "tool_calls": int(tool_calls),
        })
    return items, int(total)


async def summary(db: Any) -> dict[str, Any]:
    """Totals over every stored record."""
    async with db.begin() as conn:
        input_tokens, output_tokens, spent, calls, tool_calls = (await conn.execute(sa.select(*_sums()))).one()
    return {"total_input_tokens": int(input_tokens), "total_output_tokens": int(output_tokens),
            "total_cost_usd": round(float(spent), 6), "call_count": int(calls), "total_tool_calls": int(tool_calls)}


async def by_model(db: Any, *, performance: bool = False, limit: int = 500) -> list[dict[str, Any]]:
    """Usage per model, most expensive first; with ``performance`` also latency statistics."""
    columns = [c.model, *_sums()[:4]]
    if performance:
        columns += [sa.func.avg(c.latency_ms), sa.func.min(c.latency_ms), sa.func.max(c.latency_ms)]
    cost = sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0)
    query = sa.select(*columns).group_by(c.model).order_by(cost.desc(), c.model).limit(limit)
    async with db.begin() as conn:
        rows = (await conn.execute(query)).all()
    models = []
    for row in rows:
        calls = int(row[4])
        item: dict[str, Any] = {"model": row[0], "total_cost_usd": round(float(row[3]), 6),
                                "total_input_tokens": int(row[1]), "total_output_tokens": int(row[2]), "call_count": calls}
        if performance:
            average = round(float(row[5] or 0.0), 3)
            item.update({"avg_latency_ms": average, "min_latency_ms": round(float(row[6] or 0.0), 3),
                         "max_latency_ms": round(float(row[7] or 0.0), 3),
                         "cost_per_call": round(float(row[3]) / calls, 8) if calls else 0.0,
                         "avg_latency_per_call": average})
        models.append(item)
    return models


async def daily(db: Any, days: int = 7) -> dict[str, Any]:
    """The last ``days`` UTC days (oldest first, today last), today's cost and the first record's date."""
    today = Windows.at().day
    starts = [today - DAY * i for i in range(days - 1, -1, -1)]
    tokens = c.input_tokens + c.output_tokens
    columns = []
    for start in starts:
        inside = sa.and_(c.created_at >= start, c.created_at < start + DAY)
        columns += [sa.func.coalesce(sa.func.sum(sa.case((inside, c.cost_usd), else_=0.0)), 0.0),
                    sa.func.coalesce(sa.func.sum(sa.case((inside, tokens), else_=0)), 0),
                    sa.func.coalesce(sa.func.sum(sa.case((inside, 1), else_=0)), 0)]
    async with db.begin() as conn:
        row = (await conn.execute(sa.select(*columns).where(c.created_at >= starts[0]))).one()
        first = (await conn.execute(sa.select(sa.func.min(c.created_at)))).scalar_one()
    out = []
    for index, start in enumerate(starts):
        date = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d")
        out.append({"date": date, "cost_usd": round(float(row[3 * index]), 6), "tokens": int(row[3 * index + 1]),
                    "calls": int(row[3 * index + 2])})
    first_date = dt.datetime.fromtimestamp(first, dt.UTC).strftime("%Y-%m-%d") if first is not None else None
    return {"days": out, "today_cost_usd": out[-1]["cost_usd"], "first_event_date": first_date}

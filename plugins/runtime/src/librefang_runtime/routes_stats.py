"""Per-agent observability from the stored turns: ``/traces``, ``/metrics`` and ``/logs``."""

from __future__ import annotations

import json
from typing import Any

from librefang import Router, current_kernel
from pydantic import BaseModel, ConfigDict, Field

from librefang_runtime.service import RuntimeService
from librefang_runtime.session_admin import iso

router = Router("runtime_stats", tags=("agents",))


class TracesView(BaseModel):
    agent_id: str
    session_id: str | None = None
    timestamp: str | None = None
    traces: list[dict[str, Any]]


class MetricsView(BaseModel):
    agent_id: str
    name: str
    turns: int
    input_tokens: int
    output_tokens: int
    tool_calls: int
    tool_errors: int
    errors: int
    avg_response_ms: float
    cost_usd: float
    last_turn_at: str | None = None


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(100, ge=0, le=1000)
    level: str | None = Field(None, pattern=r"^(ok|error|cancelled)$")
    offset: int = Field(0, ge=0, le=10_000_000)


class LogsView(BaseModel):
    agent_id: str
    total: int
    entries: list[dict[str, Any]]


def service() -> RuntimeService:
    return current_kernel().services["runtime"]


@router.get("/api/agents/<agent_id>/traces", cost=2, response=TracesView)
async def agent_traces(agent_id: str) -> TracesView:
    """The decision traces (one per tool call) of the agent's most recent turn."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    _, rows = await runtime.store.turns(record.id, limit=1)
    if not rows:
        return TracesView(agent_id=record.id, traces=[])
    row = rows[0]
    return TracesView(agent_id=record.id, session_id=row["session_id"], timestamp=iso(row["created_at"]),
                      traces=json.loads(row["traces"]) if row["traces"] else [])


@router.get("/api/agents/<agent_id>/metrics", cost=2, response=MetricsView)
async def agent_metrics(agent_id: str) -> MetricsView:
    """Totals over the agent's turns: tokens, tool calls and errors, failed turns, mean latency, cost."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    totals = await runtime.store.metrics(record.id)
    last = totals.pop("last_turn_at")
    return MetricsView(agent_id=record.id, name=record.name, last_turn_at=iso(last) if last else None, **totals)


@router.get("/api/agents/<agent_id>/logs", cost=2, query=LogsQuery, response=LogsView)
async def agent_logs(agent_id: str, query: LogsQuery) -> LogsView:
    """One entry per turn, newest first (``?level=ok|error|cancelled``, ``n``, ``offset``)."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    total, rows = await runtime.store.turns(record.id, outcome=query.level, limit=query.n, offset=query.offset)
    entries = [{
        "timestamp": iso(r["created_at"]), "session_id": r["session_id"], "outcome": r["outcome"],
        "error": r["error"], "provider": r["provider"], "model": r["model"], "input_tokens": r["input_tokens"],
        "output_tokens": r["output_tokens"], "iterations": r["iterations"], "tool_calls": r["tool_calls"],
        "tool_errors": r["tool_errors"], "latency_ms": round(r["latency_ms"], 3), "cost_usd": r["cost_usd"],
    } for r in rows]
    return LogsView(agent_id=record.id, total=total, entries=entries)

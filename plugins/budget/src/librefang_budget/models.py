"""The budget plugin's tables (SQLAlchemy Core). Their history lives in ``migrations/``."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per metered LLM call (the reference's UsageRecord).
usage = sa.Table(
    "budget_usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("agent_name", sa.String(128), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(100), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_read_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_write_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("priced", sa.Boolean, nullable=False),  # False: the fallback prices were used
    sa.Column("tool_calls", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
)

# Caps set through PUT /api/budget/agents/{id}; a NULL column falls back to the manifest's [resources].
agent_limits = sa.Table(
    "budget_agent_limits",
    metadata,
    sa.Column("agent_id", sa.String(64), primary_key=True),
    sa.Column("max_cost_per_hour_usd", sa.Float, nullable=True),
    sa.Column("max_cost_per_day_usd", sa.Float, nullable=True),
    sa.Column("max_cost_per_month_usd", sa.Float, nullable=True),
    sa.Column("max_llm_tokens_per_hour", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Alerts and refusals already announced: the unique key makes "once per period" hold across processes.
alerts = sa.Table(
    "budget_alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("scope_id", sa.String(200), nullable=False),
    sa.Column("window_name", sa.String(16), nullable=False),
    sa.Column("period", sa.String(32), nullable=False),
    sa.Column("spend", sa.Float, nullable=False),
    sa.Column("cap", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("kind", "scope", "scope_id", "window_name", "period", name="uq_budget_alerts_once"),
)

"""Budget plugin tables: one row per metered LLM call, per-agent cap overrides, alerts raised.

Revision ID: budget_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "budget_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("agent_name", sa.String(128), nullable=False, server_default=""),
        sa.Column("session_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cache_read_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cache_write_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("priced", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("tool_calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Float, nullable=False, server_default="0"),
    )
    op.create_index("ix_budget_usage_created_at", "budget_usage", ["created_at"])
    op.create_index("ix_budget_usage_agent", "budget_usage", ["agent_id", "created_at"])
    op.create_index("ix_budget_usage_provider", "budget_usage", ["provider", "created_at"])
    op.create_table(
        "budget_agent_limits",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("max_cost_per_hour_usd", sa.Float, nullable=True),
        sa.Column("max_cost_per_day_usd", sa.Float, nullable=True),
        sa.Column("max_cost_per_month_usd", sa.Float, nullable=True),
        sa.Column("max_llm_tokens_per_hour", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "budget_alerts",
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
    op.create_index("ix_budget_alerts_created_at", "budget_alerts", ["created_at"])


def downgrade() -> None:
    op.drop_table("budget_alerts")
    op.drop_table("budget_agent_limits")
    op.drop_table("budget_usage")

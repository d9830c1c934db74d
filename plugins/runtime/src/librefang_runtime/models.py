"""The runtime plugin's tables (SQLAlchemy Core). Their history lives in ``migrations/``."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per session; the agent's canonical session is the agents registry's ``session_id``.
sessions = sa.Table(
    "runtime_sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("label", sa.String(128), nullable=True),
    sa.Column("message_count", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("summary", sa.Text, nullable=True),  # the latest compaction summary (0003)
)

# One row per message, in commit order (``id``); ``content`` is the JSON list of content blocks.
messages = sa.Table(
    "runtime_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(36), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("text", sa.Text, nullable=False, default=""),  # plain text, indexed for search (0002)
)

# One row per completed turn: what it cost and who served it (usage and budget features read this).
usage = sa.Table(
    "runtime_usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("session_id", sa.String(36), nullable=False),
    sa.Column("provider", sa.String(100), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("output_tokens", sa.Integer, nullable=False),
    sa.Column("cache_read_tokens", sa.Integer, nullable=False),
    sa.Column("cache_write_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("iterations", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # 0004: what the turn came to, for the agent's metrics, logs and traces
    sa.Column("outcome", sa.String(20), nullable=False, default="ok"),
    sa.Column("error", sa.String(200), nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("tool_calls", sa.Integer, nullable=False, default=0),
    sa.Column("tool_errors", sa.Integer, nullable=False, default=0),
    sa.Column("traces", sa.Text, nullable=True),
)

"""The approvals plugin's tables (SQLAlchemy Core). Their history lives in ``migrations/``."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per approval request, pending or decided (decided rows are the approvals audit trail).
requests = sa.Table(
    "approvals_requests",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("agent_name", sa.String(128), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=True),
    sa.Column("tool_name", sa.String(64), nullable=False),
    sa.Column("tool_use_id", sa.String(128), nullable=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("action_summary", sa.Text, nullable=False),
    sa.Column("risk_level", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # tool_call | manual
    sa.Column("status", sa.String(16), nullable=False),  # pending | approved | rejected | modified | timed_out | skipped
    sa.Column("totp_required", sa.Boolean, nullable=False),
    sa.Column("requested_at", sa.Float, nullable=False),
    sa.Column("timeout_secs", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("decided_at", sa.Float, nullable=True),
    sa.Column("decided_by", sa.String(200), nullable=True),
    sa.Column("feedback", sa.Text, nullable=True),
)

# The operator's TOTP enrollment: one row (id "operator"). The secret itself is in the kernel vault.
totp = sa.Table(
    "approvals_totp",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("confirmed", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("confirmed_at", sa.Float, nullable=True),
    sa.Column("pending_since", sa.Float, nullable=True),  # an unconfirmed (re-)enrollment started then
    # Highest RFC 6238 time step accepted: a code of this step or an earlier one is a replay.
    sa.Column("last_step", sa.BigInteger, nullable=False),
)

# Recovery codes: salted SHA-256 only; ``used_at`` set once a code is spent.
recovery = sa.Table(
    "approvals_totp_recovery",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),  # pending (until confirm) | active
    sa.Column("used_at", sa.Float, nullable=True),
)

# Failed code attempts per bucket (approve, confirm, setup, revoke) and the lockout they cause.
lockouts = sa.Table(
    "approvals_totp_lockouts",
    metadata,
    sa.Column("bucket", sa.String(16), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.Float, nullable=False),
)

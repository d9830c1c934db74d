"""Approvals plugin tables: requests, TOTP enrollment, recovery codes, lockouts.

Revision ID: approvals_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "approvals_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("agent_name", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("tool_name", sa.String(64), nullable=False),
        sa.Column("tool_use_id", sa.String(128), nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("action_summary", sa.Text, nullable=False),
        sa.Column("risk_level", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("totp_required", sa.Boolean, nullable=False),
        sa.Column("requested_at", sa.Float, nullable=False),
        sa.Column("timeout_secs", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("feedback", sa.Text, nullable=True),
    )
    op.create_index("ix_approvals_requests_status", "approvals_requests", ["status", "requested_at"])
    op.create_index("ix_approvals_requests_session", "approvals_requests", ["session_id", "status"])
    op.create_index("ix_approvals_requests_agent", "approvals_requests", ["agent_id", "status"])
    op.create_table(
        "approvals_totp",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("confirmed", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("confirmed_at", sa.Float, nullable=True),
        sa.Column("pending_since", sa.Float, nullable=True),
        sa.Column("last_step", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "approvals_totp_recovery",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_table(
        "approvals_totp_lockouts",
        sa.Column("bucket", sa.String(16), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approvals_totp_lockouts")
    op.drop_table("approvals_totp_recovery")
    op.drop_table("approvals_totp")
    op.drop_table("approvals_requests")

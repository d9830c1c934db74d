"""Per-turn outcome, latency, tool counts and decision traces (agent metrics, logs and traces).

Revision ID: runtime_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "runtime_0004"
down_revision = "runtime_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runtime_usage") as batch:
        batch.add_column(sa.Column("outcome", sa.String(20), nullable=False, server_default="ok"))
        batch.add_column(sa.Column("error", sa.String(200), nullable=True))
        batch.add_column(sa.Column("latency_ms", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("tool_calls", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("tool_errors", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("traces", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runtime_usage") as batch:
        for name in ("traces", "tool_errors", "tool_calls", "latency_ms", "error", "outcome"):
            batch.drop_column(name)

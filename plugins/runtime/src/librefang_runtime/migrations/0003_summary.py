"""The latest compaction summary of a session.

Revision ID: runtime_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "runtime_0003"
down_revision = "runtime_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runtime_sessions", sa.Column("summary", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("runtime_sessions", "summary")

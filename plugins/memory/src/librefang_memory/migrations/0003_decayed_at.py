"""When confidence decay last ran over a memory, so repeated runs never compound.

Revision ID: memory_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "memory_0003"
down_revision = "memory_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("memory_items", sa.Column("decayed_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("memory_items") as batch:
        batch.drop_column("decayed_at")

"""The registry version row (daemons sharing a database compare it) and an index for trimming
old tombstones.

Revision ID: agents_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0003"
down_revision = "agents_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = sa.table("agents_meta", sa.column("name", sa.String), sa.column("value", sa.Text))
    op.bulk_insert(meta, [{"name": "registry_version", "value": "0"}])
    op.create_index("ix_agents_tombstones_killed_at", "agents_tombstones", ["killed_at"])


def downgrade() -> None:
    op.drop_index("ix_agents_tombstones_killed_at", table_name="agents_tombstones")
    op.execute("DELETE FROM agents_meta WHERE name = 'registry_version'")

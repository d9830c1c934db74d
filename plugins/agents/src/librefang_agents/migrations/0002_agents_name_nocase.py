"""Agent names are unique regardless of case (they name workspace folders, and macOS and Windows
file systems ignore case).

Revision ID: agents_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0002"
down_revision = "agents_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ux_agents_registry_name_lower", "agents_registry", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("ux_agents_registry_name_lower", table_name="agents_registry")

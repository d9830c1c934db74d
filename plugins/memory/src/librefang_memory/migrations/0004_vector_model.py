"""An index of memory vectors by model: the startup comparison with the sqlite-vec index (count and
sum of row ids of one model) and the "any vector of this model?" check read it instead of every
vector (about 100 MB at 100,000 memories).

Revision ID: memory_0004
"""

from alembic import op

revision = "memory_0004"
down_revision = "memory_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_memory_vectors_model", "memory_vectors", ["model"])


def downgrade() -> None:
    op.drop_index("ix_memory_vectors_model", table_name="memory_vectors")

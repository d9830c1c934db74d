"""Document frequencies of the search index (SQLite): lets a query skip words found almost everywhere.

Revision ID: memory_0002
"""

from alembic import op

revision = "memory_0002"
down_revision = "memory_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE memory_items_vocab USING fts5vocab(memory_items_fts, 'row')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS memory_items_vocab")

"""Full-text search over message text (SQLite FTS5; other databases search with LIKE).

Revision ID: runtime_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "runtime_0002"
down_revision = "runtime_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The plain text of each message beside its JSON, so search never parses content blocks.
    op.add_column("runtime_messages", sa.Column("text", sa.Text, nullable=False, server_default=""))
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE runtime_messages_fts USING fts5("
            "text, content='runtime_messages', content_rowid='id', tokenize='unicode61')"
        )
        # External-content FTS kept in step by triggers: every writer of runtime_messages stays simple.
        op.execute(
            "CREATE TRIGGER runtime_messages_ai AFTER INSERT ON runtime_messages BEGIN "
            "INSERT INTO runtime_messages_fts(rowid, text) VALUES (new.id, new.text); END"
        )
        op.execute(
            "CREATE TRIGGER runtime_messages_ad AFTER DELETE ON runtime_messages BEGIN "
            "INSERT INTO runtime_messages_fts(runtime_messages_fts, rowid, text) VALUES ('delete', old.id, old.text); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS runtime_messages_ad")
        op.execute("DROP TRIGGER IF EXISTS runtime_messages_ai")
        op.execute("DROP TABLE IF EXISTS runtime_messages_fts")
    op.drop_column("runtime_messages", "text")

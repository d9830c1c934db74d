"""The full-text index is brought up to date after a turn's commit, not inside it (SQLite only).

Until now a trigger indexed every message in the transaction that stored it: the FTS5 insert was about
half of a turn's commit, on the critical path of the reply. From here on the index holds exactly the
messages whose id is at most ``runtime_search_state.indexed_to``; ``search_index.index_pending``
indexes the ones above it in a later transaction (and search does so first). The triggers keep the
rest exact: an insert at or below the mark (an id reused after the newest messages were deleted, a
compaction summary taking its first message's id) is indexed at once, and a delete at or below it is
removed from the index (one above it was never indexed, and an external-content index must not be
told to delete what it does not hold).

Revision ID: runtime_0005
"""

from alembic import op

revision = "runtime_0005"
down_revision = "runtime_0004"
branch_labels = None
depends_on = None

_INSERT = ("CREATE TRIGGER runtime_messages_ai AFTER INSERT ON runtime_messages{when} BEGIN "
           "INSERT INTO runtime_messages_fts(rowid, text) VALUES (new.id, new.text); END")
_DELETE = ("CREATE TRIGGER runtime_messages_ad AFTER DELETE ON runtime_messages{when} BEGIN "
           "INSERT INTO runtime_messages_fts(runtime_messages_fts, rowid, text) VALUES ('delete', old.id, old.text); END")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("CREATE TABLE runtime_search_state (id INTEGER PRIMARY KEY CHECK (id = 1), indexed_to INTEGER NOT NULL)")
    # Every message so far was indexed by the old trigger.
    op.execute("INSERT INTO runtime_search_state (id, indexed_to) SELECT 1, coalesce(max(id), 0) FROM runtime_messages")
    op.execute("DROP TRIGGER IF EXISTS runtime_messages_ai")
    op.execute("DROP TRIGGER IF EXISTS runtime_messages_ad")
    op.execute(_INSERT.format(when=" WHEN new.id <= (SELECT indexed_to FROM runtime_search_state)"))
    op.execute(_DELETE.format(when=" WHEN old.id <= (SELECT indexed_to FROM runtime_search_state)"))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Index what is still pending, then go back to indexing in the writer's transaction.
    op.execute("INSERT INTO runtime_messages_fts(rowid, text) SELECT id, text FROM runtime_messages "
               "WHERE id > (SELECT indexed_to FROM runtime_search_state)")
    op.execute("DROP TRIGGER IF EXISTS runtime_messages_ai")
    op.execute("DROP TRIGGER IF EXISTS runtime_messages_ad")
    op.execute(_INSERT.format(when=""))
    op.execute(_DELETE.format(when=""))
    op.execute("DROP TABLE runtime_search_state")

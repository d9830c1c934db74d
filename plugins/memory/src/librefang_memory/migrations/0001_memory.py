"""Memory plugin tables: KV pairs, proactive memory items with history, entities and relations,
embeddings, and run-time settings; full-text search over item content.

Revision ID: memory_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "memory_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memory_kv",
        sa.Column("agent_id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "memory_items",
        # An integer row id for the FTS index (external content); ``id`` is the public UUID.
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("agent_id", sa.String(36), nullable=False),
        # The agent id as one search token, so a per-agent search is one FTS query (see store.py).
        sa.Column("agent_tag", sa.String(40), nullable=False),
        sa.Column("peer_id", sa.String(256), nullable=True),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("category", sa.String(64), nullable=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
        sa.Column("source", sa.String(64), nullable=False, server_default="api"),
        sa.Column("confidence", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("accessed_at", sa.Float, nullable=False),
        sa.Column("access_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("deleted_at", sa.Float, nullable=True),
    )
    op.create_index("ix_memory_items_agent", "memory_items", ["agent_id", "deleted", "created_at"])
    op.create_index("ix_memory_items_level", "memory_items", ["level", "deleted", "created_at"])
    op.create_table(
        "memory_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("memory_id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("old_content", sa.Text, nullable=True),
        sa.Column("new_content", sa.Text, nullable=True),
        sa.Column("old_metadata", sa.Text, nullable=True),
        sa.Column("new_metadata", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_memory_history_memory", "memory_history", ["memory_id", "id"])
    op.create_table(
        "memory_vectors",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_memory_vectors_agent", "memory_vectors", ["agent_id"])
    op.create_table(
        "memory_entities",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("entity_type", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("properties", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("agent_id", "entity_type", "name", name="uq_memory_entities_name"),
    )
    op.create_table(
        "memory_relations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("source_entity", sa.String(36), nullable=False),
        sa.Column("relation_type", sa.String(64), nullable=False),
        sa.Column("target_entity", sa.String(36), nullable=False),
        sa.Column("properties", sa.Text, nullable=False, server_default="{}"),
        sa.Column("confidence", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("agent_id", "source_entity", "relation_type", "target_entity",
                            name="uq_memory_relations_triple"),
    )
    op.create_table(
        "memory_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE memory_items_fts USING fts5("
            "content, agent_tag, content='memory_items', content_rowid='seq', tokenize='unicode61')"
        )
        # External-content FTS kept in step by triggers: every writer of memory_items stays simple.
        op.execute(
            "CREATE TRIGGER memory_items_ai AFTER INSERT ON memory_items BEGIN "
            "INSERT INTO memory_items_fts(rowid, content, agent_tag) VALUES (new.seq, new.content, new.agent_tag); END"
        )
        op.execute(
            "CREATE TRIGGER memory_items_ad AFTER DELETE ON memory_items BEGIN "
            "INSERT INTO memory_items_fts(memory_items_fts, rowid, content, agent_tag) "
            "VALUES ('delete', old.seq, old.content, old.agent_tag); END"
        )
        op.execute(
            "CREATE TRIGGER memory_items_au AFTER UPDATE OF content ON memory_items BEGIN "
            "INSERT INTO memory_items_fts(memory_items_fts, rowid, content, agent_tag) "
            "VALUES ('delete', old.seq, old.content, old.agent_tag); "
            "INSERT INTO memory_items_fts(rowid, content, agent_tag) VALUES (new.seq, new.content, new.agent_tag); END"
        )
    elif dialect == "postgresql":
        op.execute(
            "CREATE INDEX ix_memory_items_fts ON memory_items USING GIN (to_tsvector('simple', content))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("memory_items_au", "memory_items_ad", "memory_items_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS memory_items_fts")
    for table in ("memory_settings", "memory_relations", "memory_entities", "memory_vectors", "memory_history",
                  "memory_items", "memory_kv"):
        op.drop_table(table)

"""SQLAlchemy Core descriptions of the memory plugin's tables (created by ``migrations/``)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

kv = sa.Table(
    "memory_kv", metadata,
    sa.Column("agent_id", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

items = sa.Table(
    "memory_items", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("agent_tag", sa.String(40), nullable=False),
    sa.Column("peer_id", sa.String(256)),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("category", sa.String(64)),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("accessed_at", sa.Float, nullable=False),
    sa.Column("access_count", sa.Integer, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("deleted_at", sa.Float),
    sa.Column("decayed_at", sa.Float),
)

history = sa.Table(
    "memory_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("memory_id", sa.String(36), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("old_content", sa.Text),
    sa.Column("new_content", sa.Text),
    sa.Column("old_metadata", sa.Text),
    sa.Column("new_metadata", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
)

vectors = sa.Table(
    "memory_vectors", metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

entities = sa.Table(
    "memory_entities", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("entity_type", sa.String(64), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("properties", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

relations = sa.Table(
    "memory_relations", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("agent_id", sa.String(36), nullable=False),
    sa.Column("source_entity", sa.String(36), nullable=False),
    sa.Column("relation_type", sa.String(64), nullable=False),
    sa.Column("target_entity", sa.String(36), nullable=False),
    sa.Column("properties", sa.Text, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

settings = sa.Table(
    "memory_settings", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

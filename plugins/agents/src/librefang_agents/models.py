"""The plugin's tables (SQLAlchemy Core). Their history lives in ``migrations/``."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per live agent. The manifest is stored whole (JSON of the keys that were set); the
# columns beside it are what listing, filtering and sorting need, so a list never parses manifests.
agents = sa.Table(
    "agents_registry",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("author", sa.String(200), nullable=False, default=""),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("profile", sa.String(20), nullable=True),
    sa.Column("schedule", sa.String(20), nullable=False),
    sa.Column("model_provider", sa.String(100), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("tags", sa.Text, nullable=False, default="[]"),
    sa.Column("identity", sa.Text, nullable=False, default="{}"),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("parent_id", sa.String(36), nullable=True),
    sa.Column("session_id", sa.String(36), nullable=False),
    sa.Column("signer", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_active", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, default=0),
)

# Killed agents, so a repeated DELETE answers "already-deleted" while an id that never existed is 404.
tombstones = sa.Table(
    "agents_tombstones",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("killed_at", sa.Float, nullable=False),
)

uploads = sa.Table(
    "agents_uploads",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("agent_id", sa.String(36), nullable=False, index=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(200), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

meta = sa.Table(
    "agents_meta",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

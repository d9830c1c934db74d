"""Agents plugin tables: registry, tombstones, uploads, meta.

Revision ID: agents_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents_registry",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("profile", sa.String(20), nullable=True),
        sa.Column("schedule", sa.String(20), nullable=False),
        sa.Column("model_provider", sa.String(100), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("parent_id", sa.String(36), nullable=True),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("signer", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_active", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ux_agents_registry_name", "agents_registry", ["name"], unique=True)
    op.create_index("ix_agents_registry_state", "agents_registry", ["state"])
    op.create_index("ix_agents_registry_created_at", "agents_registry", ["created_at"])
    op.create_index("ix_agents_registry_last_active", "agents_registry", ["last_active"])
    op.create_index("ix_agents_registry_parent_id", "agents_registry", ["parent_id"])
    op.create_table(
        "agents_tombstones",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("killed_at", sa.Float, nullable=False),
    )
    op.create_table(
        "agents_uploads",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_agents_uploads_agent_id", "agents_uploads", ["agent_id"])
    op.create_table(
        "agents_meta",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agents_meta")
    op.drop_table("agents_uploads")
    op.drop_table("agents_tombstones")
    op.drop_table("agents_registry")

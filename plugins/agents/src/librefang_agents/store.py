"""Data access for the agent registry: rows in, records out (no HTTP, no events).

Updates use optimistic concurrency (a ``revision`` column): a writer that lost a race re-reads and
retries, so two daemons sharing one PostgreSQL database never overwrite each other's change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from librefang_agents.manifest import AgentManifest, validate_manifest
from librefang_agents.models import agents, meta, tombstones

STATES = ("Created", "Running", "Suspended", "Terminated", "Crashed")
SORTS = {
    "name": (agents.c.name,),
    "created_at": (agents.c.created_at, agents.c.name),
    "last_active": (agents.c.last_active, agents.c.name),
    "state": (agents.c.state, agents.c.name),
}
LIST_COLUMNS = (
    agents.c.id,
    agents.c.name,
    agents.c.description,
    agents.c.author,
    agents.c.state,
    agents.c.mode,
    agents.c.profile,
    agents.c.schedule,
    agents.c.model_provider,
    agents.c.model_name,
    agents.c.tags,
    agents.c.identity,
    agents.c.parent_id,
    agents.c.session_id,
    agents.c.created_at,
    agents.c.last_active,
)


class NameTaken(Exception):
    """Another agent already has this name."""


class StaleRecord(Exception):
    """The row changed (or vanished) since it was read."""


@dataclass
class AgentRecord:
    """One agent as stored: the manifest (keys that were set) plus registry state."""

    id: str
    name: str
    state: str
    mode: str
    manifest: dict[str, Any]
    parent_id: str | None = None
    session_id: str = ""
    signer: str | None = None
    created_at: float = 0.0
    last_active: float = 0.0
    updated_at: float = 0.0
    revision: int = 0

    @property
    def identity(self) -> dict[str, Any]:
        """The visual identity (kept in the manifest's ``[identity]`` table)."""
        value = self.manifest.get("identity")
        return dict(value) if isinstance(value, dict) else {}

    def parsed(self) -> AgentManifest:
        """The manifest as a validated model (stored data was validated when written)."""
        return validate_manifest(self.manifest)


def _columns(record: AgentRecord, manifest: AgentManifest) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "description": manifest.description,
        "author": manifest.author,
        "state": record.state,
        "mode": record.mode,
        "profile": manifest.profile,
        "schedule": manifest.schedule_kind(),
        "model_provider": manifest.model.provider,
        "model_name": manifest.model.model,
        "tags": json.dumps(manifest.tags),
        "identity": json.dumps(manifest.identity.model_dump(mode="json", exclude_none=True) if manifest.identity else {}),
        "manifest": json.dumps(record.manifest, separators=(",", ":")),
        "parent_id": record.parent_id,
        "session_id": record.session_id,
        "signer": record.signer,
        "created_at": record.created_at,
        "last_active": record.last_active,
        "updated_at": record.updated_at,
        "revision": record.revision,
    }


def _record(row: Any) -> AgentRecord:
    return AgentRecord(
        id=row.id,
        name=row.name,
        state=row.state,
        mode=row.mode,
        manifest=json.loads(row.manifest),
        parent_id=row.parent_id,
        session_id=row.session_id,
        signer=row.signer,
        created_at=row.created_at,
        last_active=row.last_active,
        updated_at=row.updated_at,
        revision=row.revision,
    )


class AgentStore:
    """Queries over the plugin's tables through the kernel's database."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def insert(self, record: AgentRecord, manifest: AgentManifest) -> None:
        """Add a new agent; :class:`NameTaken` when the name is in use."""
        try:
            async with self.db.begin() as conn:
                await conn.execute(agents.insert().values(**_columns(record, manifest)))
        except IntegrityError:
            raise NameTaken(record.name) from None

    async def get(self, agent_id: str) -> AgentRecord | None:
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(agents).where(agents.c.id == agent_id))).first()
        return _record(row) if row is not None else None

    async def get_by_name(self, name: str) -> AgentRecord | None:
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(agents).where(agents.c.name == name))).first()
        return _record(row) if row is not None else None

    async def save(self, record: AgentRecord, manifest: AgentManifest) -> AgentRecord:
        """Write a changed record if nobody changed it since it was read (bumps ``revision``)."""
        old_revision = record.revision
        record.revision = old_revision + 1
        record.updated_at = time.time()
        values = _columns(record, manifest)
        del values["id"]
        try:
            async with self.db.begin() as conn:
                result = await conn.execute(
                    agents.update()
                    .where(agents.c.id == record.id, agents.c.revision == old_revision)
                    .values(**values)
                )
        except IntegrityError:
            record.revision = old_revision
            raise NameTaken(record.name) from None
        if result.rowcount != 1:
            record.revision = old_revision
            raise StaleRecord(record.id)
        return record

    async def set_fields(self, agent_id: str, **values: Any) -> bool:
        """Update plain columns (state, last_active, session_id); False when the agent is gone."""
        async with self.db.begin() as conn:
            result = await conn.execute(
                agents.update().where(agents.c.id == agent_id).values(revision=agents.c.revision + 1, **values)
            )
        return result.rowcount == 1

    async def delete(self, record: AgentRecord) -> bool:
        """Remove an agent and leave a tombstone; False when another request removed it first."""
        async with self.db.begin() as conn:
            result = await conn.execute(agents.delete().where(agents.c.id == record.id))
            if result.rowcount != 1:
                return False
            await conn.execute(tombstones.delete().where(tombstones.c.id == record.id))
            await conn.execute(tombstones.insert().values(id=record.id, name=record.name, killed_at=time.time()))
        return True

    async def was_killed(self, agent_id: str) -> bool:
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(tombstones.c.id).where(tombstones.c.id == agent_id))).first()
        return row is not None

    async def children_of(self, ids: list[str]) -> dict[str, list[str]]:
        """Child ids of each of ``ids`` (one query for a whole page)."""
        if not ids:
            return {}
        async with self.db.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(agents.c.parent_id, agents.c.id).where(agents.c.parent_id.in_(ids)).order_by(agents.c.created_at)
                )
            ).all()
        out: dict[str, list[str]] = {}
        for parent, child in rows:
            out.setdefault(parent, []).append(child)
        return out

    async def page(
        self, *, q: str | None, state: str | None, sort: str, descending: bool, limit: int, offset: int
    ) -> tuple[list[Any], int]:
        """One page of summary rows and the total matching the filters."""
        where = []
        if q:
            needle = q.lower()
            where.append(
                sa.or_(
                    sa.func.lower(agents.c.name).contains(needle, autoescape=True),
                    sa.func.lower(agents.c.description).contains(needle, autoescape=True),
                )
            )
        if state:
            where.append(agents.c.state == state)
        order = [c.desc() if descending else c.asc() for c in SORTS[sort]]
        order.append(agents.c.id.desc() if descending else agents.c.id.asc())
        stmt = sa.select(*LIST_COLUMNS).where(*where).order_by(*order).limit(limit).offset(offset)
        count = sa.select(sa.func.count()).select_from(agents).where(*where)
        async with self.db.begin() as conn:
            rows = (await conn.execute(stmt)).all() if limit else []
            total = (await conn.execute(count)).scalar_one()
        return rows, int(total)

    async def ids(self, names: list[str] | None = None) -> list[str]:
        async with self.db.begin() as conn:
            stmt = sa.select(agents.c.id)
            if names is not None:
                stmt = stmt.where(agents.c.name.in_(names))
            return [r[0] for r in (await conn.execute(stmt)).all()]

    async def counts(self) -> tuple[int, int]:
        """(all agents, running agents)."""
        running = sa.func.sum(sa.case((agents.c.state == "Running", 1), else_=0))
        async with self.db.begin() as conn:
            total, active = (await conn.execute(sa.select(sa.func.count(), running).select_from(agents))).one()
        return int(total), int(active or 0)

    async def get_meta(self, name: str) -> str | None:
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(meta.c.value).where(meta.c.name == name))).first()
        return row[0] if row is not None else None

    async def set_meta(self, name: str, value: str) -> None:
        async with self.db.begin() as conn:
            await conn.execute(meta.delete().where(meta.c.name == name))
            await conn.execute(meta.insert().values(name=name, value=value))

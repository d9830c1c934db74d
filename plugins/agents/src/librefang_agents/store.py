"""Data access for the agent registry: rows in, records out (no HTTP, no events).

Updates use optimistic concurrency (a ``revision`` column): a writer that lost a race re-reads and
retries, so two daemons sharing one PostgreSQL database never overwrite each other's change. Lists
and counts are answered from :class:`~librefang_agents.index.AgentIndex`, kept in step with every
write; with a shared database (``shared=True``) a version row tells when another process wrote.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from librefang_agents.index import AgentIndex, Entry, search_text
from librefang_agents.manifest import AgentManifest, validate_manifest
from librefang_agents.models import agents, meta, tombstones

VERSION_KEY = "registry_version"
MAX_CACHED_ROWS = 2_000
_INSERT = agents.insert()

STATES = ("Created", "Running", "Suspended", "Terminated", "Crashed")
SORTS = ("name", "created_at", "last_active", "state")
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


class _Unchanged(Exception):
    """Raised inside a write that matched no row, so the transaction (and an audit entry committed
    with it) is abandoned."""


Commit = Callable[[Callable[[Any], Any]], Awaitable[Any]]


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
        """The manifest as a validated model (stored data was validated when written).

        Records read from one stored row share its validated model (a turn reads its agent several
        times: runtime, budget, memory), used only while this record's manifest still equals the
        row's (a caller may change ``manifest``); treat the model as read-only."""
        memo: list[Any] | None = getattr(self, "_memo", None)
        if memo is not None and memo[1] is not None and self.manifest == memo[0]:
            return memo[1]
        manifest = validate_manifest(self.manifest)
        if memo is not None and self.manifest == memo[0]:
            memo[1] = manifest
        return manifest


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


def _entry(values: dict[str, Any], manifest: AgentManifest) -> Entry:
    identity = manifest.identity.model_dump(mode="json", exclude_none=True) if manifest.identity else {}
    return Entry(
        id=values["id"], name=values["name"], description=values["description"], author=values["author"],
        state=values["state"], mode=values["mode"], profile=values["profile"], schedule=values["schedule"],
        model_provider=values["model_provider"], model_name=values["model_name"], tags=list(manifest.tags),
        identity=identity, parent_id=values["parent_id"], session_id=values["session_id"],
        created_at=values["created_at"], last_active=values["last_active"],
        search=search_text(values["name"], values["description"]),
    )


# 19 digits in a row may be an integer beyond 64 bits, which orjson would read as a float.
_LONG_NUMBER = re.compile(r"\d{19}")


def load_json(text: str) -> Any:
    """``json.loads(text)``, faster: orjson reads what it reads exactly as the stdlib does (strings,
    64-bit integers, floats to the same double), and refuses NaN, infinities and numbers beyond a
    double; text that may hold an integer beyond 64 bits, or that orjson refuses, is read by the
    stdlib."""
    if _LONG_NUMBER.search(text) is None:
        import orjson  # on first use: not needed to start the daemon (tests/bench/test_startup_imports.py)

        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _record(row: Any) -> AgentRecord:
    return AgentRecord(
        id=row.id,
        name=row.name,
        state=row.state,
        mode=row.mode,
        manifest=load_json(row.manifest),
        parent_id=row.parent_id,
        session_id=row.session_id,
        signer=row.signer,
        created_at=row.created_at,
        last_active=row.last_active,
        updated_at=row.updated_at,
        revision=row.revision,
    )


def _read_version(conn: Any) -> int:
    # The row is created by migration agents_0003, so concurrent daemons never race to insert it.
    value = conn.execute(sa.select(meta.c.value).where(meta.c.name == VERSION_KEY)).scalar()
    return int(value) if value is not None else 0


def _first(conn: Any, statement: Any) -> Any:
    return conn.execute(statement).first()


def _rowcount(conn: Any, statement: Any) -> int:
    return int(conn.execute(statement).rowcount or 0)


class AgentStore:
    """Queries over the plugin's tables through the kernel's database, with the list index.

    Every query is a plain function run by ``Database.run``: with SQLite the whole transaction is
    one hop to the database thread (which also runs our writes one at a time, so they never wait
    on each other in SQLite's busy handler); with PostgreSQL it is ``run_sync`` on the async engine.
    """

    def __init__(self, db: Any, *, shared: bool = False) -> None:
        self.db = db
        self.shared = shared
        self.index = AgentIndex()
        self.version: int | None = None
        self._reserved: set[str] = set()  # lower-cased names of spawns being written
        # Rows by id as last read, when every write goes through this store (not shared): a turn
        # reads its agent several times (runtime, budget, memory), each a database hop otherwise.
        self._rows: dict[str, Any] = {}
        # id -> [the cached row's manifest data, its validated model or None]: see AgentRecord.parsed
        self._memos: dict[str, list[Any]] = {}
        self._writes = 0  # bumped around every write: a read that overlapped one is not kept

    def _forget(self, agent_id: str) -> None:
        self._writes += 1
        self._rows.pop(agent_id, None)

    def _cached_record(self, agent_id: str, row: Any) -> AgentRecord:
        """A fresh record of a cached row, sharing the validated manifest of the agent's manifest data
        as long as that data is unchanged (a write of other columns, like ``last_active``, keeps it)."""
        record = _record(row)
        memo = self._memos.get(agent_id)
        # memo[2]: the stored text it was read from; the same text is the same data (no deep compare)
        if memo is None or (memo[2] is not row.manifest and memo[2] != row.manifest):
            memo = self._memos[agent_id] = [load_json(row.manifest), None, row.manifest]
        record._memo = memo  # type: ignore[attr-defined]
        return record

    def cached(self, agent_id: str) -> AgentRecord | None:
        """The agent when its row is cached (``agent_id`` exactly as stored), without a database read."""
        row = self._rows.get(agent_id)
        return self._cached_record(agent_id, row) if row is not None else None

    # -- the index ------------------------------------------------------------------------------
    async def load(self) -> None:
        """(Re)build the index from the table."""

        def read(conn: Any) -> tuple[list[Any], int | None]:
            # The version first: on PostgreSQL (READ COMMITTED) each statement sees its own snapshot, so a
            # spawn committing between the two reads would leave an index without its row under a version
            # that counts it, and no later sync would reload. Read in this order, the version can only be
            # older than the rows: the next sync reloads once more.
            version = _read_version(conn) if self.shared else None
            return conn.execute(sa.select(*LIST_COLUMNS)).all(), version

        rows, version = await self.db.run(read)
        self._writes += 1
        self._rows.clear()
        self._memos.clear()
        self.index.load(rows)
        self.version = version

    def _bump(self, conn: Any) -> None:
        """Count a write (shared databases only): other processes see the index is stale."""
        if not self.shared:
            return
        conn.execute(
            meta.update().where(meta.c.name == VERSION_KEY)
            .values(value=sa.cast(sa.cast(meta.c.value, sa.Integer) + 1, sa.String))
        )
        new = _read_version(conn)
        # Our own write moves the version by one; anything more means another process wrote too.
        self.version = new if self.version is not None and new == self.version + 1 else None

    async def sync(self) -> None:
        """Reload the index when another process changed the registry (shared databases)."""
        if not self.shared:
            return
        if await self.db.run(_read_version) != self.version:
            await self.load()

    # -- writes ---------------------------------------------------------------------------------
    async def insert(self, record: AgentRecord, manifest: AgentManifest, commit: Commit | None = None) -> None:
        """Add a new agent; :class:`NameTaken` when the name is in use.

        ``commit(write)`` runs the row's write in a transaction and returns after the commit: the
        service passes the audit chain's ``record_with``, so the row and its audit entry are one
        transaction, group-committed with concurrent spawns (N spawns, one commit). Default:
        ``Database.run``.
        """
        key = record.name.lower()
        if not self.shared and (key in self.index.by_name or key in self._reserved):
            raise NameTaken(record.name)
        values = _columns(record, manifest)

        def write(conn: Any) -> None:
            conn.execute(_INSERT, values)
            self._bump(conn)

        # Reserved while in flight: two concurrent spawns of one name would otherwise share a
        # transaction and fail it for everyone in it.
        self._reserved.add(key)
        self._forget(record.id)
        try:
            await (commit or self.db.run)(write)
        except IntegrityError:
            raise NameTaken(record.name) from None
        finally:
            self._reserved.discard(key)
            self._forget(record.id)
        self.index.put(_entry(values, manifest))

    async def save(self, record: AgentRecord, manifest: AgentManifest, commit: Commit | None = None) -> AgentRecord:
        """Write a changed record if nobody changed it since it was read (bumps ``revision``).

        ``commit`` as for :meth:`insert` (the service's audit entry commits with the change).
        """
        old_revision = record.revision
        record.revision = old_revision + 1
        record.updated_at = time.time()
        values = _columns(record, manifest)
        update = {k: v for k, v in values.items() if k != "id"}

        def write(conn: Any) -> None:
            result = conn.execute(
                agents.update().where(agents.c.id == record.id, agents.c.revision == old_revision).values(**update)
            )
            if result.rowcount != 1:
                raise _Unchanged
            self._bump(conn)

        self._forget(record.id)
        try:
            await (commit or self.db.run)(write)
        except IntegrityError:
            record.revision = old_revision
            raise NameTaken(record.name) from None
        except _Unchanged:
            record.revision = old_revision
            raise StaleRecord(record.id) from None
        finally:
            self._forget(record.id)
        self.index.put(_entry(values, manifest))
        return record

    async def set_fields(self, agent_id: str, *, commit: Commit | None = None, **values: Any) -> bool:
        """Update plain columns (state, mode, last_active, session_id, parent_id); False when gone.

        ``commit`` as for :meth:`insert`; nothing is committed (no audit entry either) when the
        agent is gone.
        """

        def write(conn: Any) -> None:
            result = conn.execute(
                agents.update().where(agents.c.id == agent_id).values(revision=agents.c.revision + 1, **values)
            )
            if result.rowcount != 1:
                raise _Unchanged
            self._bump(conn)

        self._forget(agent_id)
        try:
            await (commit or self.db.run)(write)
        except _Unchanged:
            return False
        finally:
            self._forget(agent_id)
        self.index.update(agent_id, **{k: v for k, v in values.items() if k != "updated_at"})
        return True

    async def delete(self, record: AgentRecord, commit: Commit | None = None) -> bool:
        """Remove an agent and leave a tombstone; False when another request removed it first."""

        def write(conn: Any) -> None:
            if conn.execute(agents.delete().where(agents.c.id == record.id)).rowcount != 1:
                raise _Unchanged
            conn.execute(tombstones.delete().where(tombstones.c.id == record.id))
            conn.execute(tombstones.insert().values(id=record.id, name=record.name, killed_at=time.time()))
            self._bump(conn)

        self._forget(record.id)
        try:
            await (commit or self.db.run)(write)
        except _Unchanged:
            return False
        finally:
            self._forget(record.id)
            self._memos.pop(record.id, None)
        self.index.remove(record.id)
        return True

    # -- reads ----------------------------------------------------------------------------------
    async def get(self, agent_id: str) -> AgentRecord | None:
        """The agent (a fresh record each call: callers may change it)."""
        row = self._rows.get(agent_id)
        if row is not None:
            return self._cached_record(agent_id, row)
        writes = self._writes
        row = await self.db.run(_first, sa.select(agents).where(agents.c.id == agent_id))
        if row is None:
            return None
        if not self.shared and writes == self._writes:
            if len(self._rows) >= MAX_CACHED_ROWS:
                self._rows.clear()
                self._memos.clear()
            self._rows[agent_id] = row
            return self._cached_record(agent_id, row)
        return _record(row)

    async def get_by_name(self, name: str) -> AgentRecord | None:
        """The agent with this name, compared without case (as uniqueness is)."""
        row = await self.db.run(_first, sa.select(agents).where(sa.func.lower(agents.c.name) == name.lower()))
        return _record(row) if row is not None else None

    async def trim_tombstones(self, older_than: float) -> int:
        """Forget killed agents older than ``older_than`` (epoch): a DELETE of them is then a 404."""
        return await self.db.run(_rowcount, tombstones.delete().where(tombstones.c.killed_at < older_than))

    async def was_killed(self, agent_id: str) -> bool:
        return await self.db.run(_first, sa.select(tombstones.c.id).where(tombstones.c.id == agent_id)) is not None

    async def children_of(self, ids: list[str]) -> dict[str, list[str]]:
        """Child ids of each of ``ids``."""
        await self.sync()
        return {i: list(self.index.children[i]) for i in ids if i in self.index.children}

    async def page(
        self, *, q: str | None, state: str | None, sort: str, descending: bool, limit: int, offset: int
    ) -> tuple[list[Entry], int, dict[str, list[str]]]:
        """One page of entries, the total matching the filters, and the children of the page's agents."""
        await self.sync()
        entries, total = self.index.page(q=q, state=state, sort=sort, descending=descending, limit=limit, offset=offset)
        children = self.index.children
        return entries, total, {e.id: list(children[e.id]) for e in entries if e.id in children}

    async def counts(self) -> tuple[int, int]:
        """(all agents, running agents)."""
        await self.sync()
        return self.index.counts()

    async def get_meta(self, name: str) -> str | None:
        row = await self.db.run(_first, sa.select(meta.c.value).where(meta.c.name == name))
        return row[0] if row is not None else None

    async def set_meta(self, name: str, value: str) -> None:
        def write(conn: Any) -> None:
            conn.execute(meta.delete().where(meta.c.name == name))
            conn.execute(meta.insert().values(name=name, value=value))

        await self.db.run(write)

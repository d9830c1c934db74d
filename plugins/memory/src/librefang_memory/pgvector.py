"""The KNN index of memory vectors on PostgreSQL: a ``vector(N)`` column of the pgvector extension.

Used when the server has pgvector and ``CREATE EXTENSION IF NOT EXISTS vector`` succeeds (or the
extension is already there); otherwise the memory plugin ranks vectors in-process. Nothing here runs
on SQLite, and no Alembic revision depends on it: the table ``memory_pgvector`` is created at
startup, only when the extension is available, because its column size is the embedding model's.

``memory_vectors`` stays the source of truth. Each row here references its row there with
``ON DELETE CASCADE``: a purge or a re-embedding (delete + insert of the ``memory_vectors`` row)
removes the derived row in the same statement, so this table never holds a stale vector, only
possibly too few. At startup the missing ones are copied from ``memory_vectors`` (rows written
while pgvector was not in use, or all of them after the table was created). New vectors are written
in the same transaction as their ``memory_vectors`` rows.

Searches are exact KNN in the server (``ORDER BY embedding <=> q LIMIT k``) joined with
``memory_items`` so that soft-deleted items and the level / peer / agent filters are applied before
the limit. There is deliberately no HNSW or IVFFlat index: pgvector 0.6 applies a ``WHERE`` clause
after an approximate index scan, so a per-agent or per-level query would silently lose results
(iterative scans arrived in pgvector 0.8). The ``agent_id`` B-tree index keeps the per-agent query
(the recall before every turn) to that agent's rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import sqlalchemy as sa

from librefang_memory.models import settings, vectors

log = logging.getLogger("librefang.memory.vectors")

TABLE = "memory_pgvector"
SETTING = "pgvector_index"  # memory_settings row: {"model": ..., "dimensions": ...} of the table
MAX_DIMENSIONS = 16000  # pgvector's limit for a vector column (no ANN index here, whose limit is 2,000)
FILL_BATCH = 2000
# asyncpg has no codec for pgvector's type: vectors travel as text and are cast by the server.
VEC = "CAST(CAST(:{name} AS text) AS vector)"


def vector_literal(blob: bytes) -> str:
    """pgvector's text form of a float32 BLOB. ``repr`` of each value (a double equal to the float32)
    parses back to the same float32: the stored vector is bit-for-bit the one in ``memory_vectors``."""
    import numpy as np

    return "[" + ",".join(map(repr, np.frombuffer(blob, dtype=np.float32).tolist())) + "]"


class PgVectorIndex:
    """``memory_pgvector`` (seq, agent_id, embedding vector(N)) of one embedding model."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.model: str | None = None
        self.dimensions: int | None = None
        self.version: str | None = None
        # Two first writes of a model at once must not both (re)create the table: the second would
        # drop the rows the first one just wrote.
        self._shape_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------------
    async def enable(self) -> str | None:
        """Make sure the extension is installed in the database. None when pgvector can be used,
        otherwise why not (the caller falls back to in-process ranking)."""
        async with self.db.begin() as conn:
            self.version = (await conn.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))).scalar()
            available = (await conn.execute(
                sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"))).scalar()
        if self.version is None:
            if not available:
                return "the PostgreSQL server has no pgvector extension"
            try:
                async with self.db.begin() as conn:
                    await conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
                    self.version = (await conn.execute(
                        sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))).scalar()
            except sa.exc.DBAPIError as exc:  # typically: permission denied (pgvector is not a trusted extension)
                reason = str(getattr(exc, "orig", exc)).splitlines()[0]
                return f"CREATE EXTENSION vector failed ({reason})"
        return None

    async def open(self, model: str) -> None:
        """Read which model the table holds; create or refill it for ``model`` (after :meth:`enable`)."""
        async with self.db.begin() as conn:
            column = (await conn.execute(sa.text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:table) AND a.attname = 'embedding' AND NOT a.attisdropped"),
                {"table": TABLE})).scalar()
            saved = (await conn.execute(sa.select(settings.c.value).where(settings.c.name == SETTING))).scalar()
        meta = json.loads(saved) if saved else {}
        # The table counts only when the column is still there with the size the settings name
        # (``DROP EXTENSION vector CASCADE`` drops the column and leaves the table).
        if column is not None and meta.get("dimensions") and column == f"vector({int(meta['dimensions'])})":
            self.model, self.dimensions = meta.get("model"), int(meta["dimensions"])
        if self.model != model:
            async with self.db.begin() as conn:
                blob = (await conn.execute(sa.select(vectors.c.vector).where(vectors.c.model == model)
                                           .limit(1))).scalar()
            if blob is None:
                if self.model is not None or column is not None:
                    await self.ensure(model, None)  # another model's vectors: not comparable, dropped
                return  # created at the first vector (its size is known then)
            await self.ensure(model, len(blob) // 4)
        filled = await self.fill(model)
        if filled:
            log.info("copied %d vectors of %s from memory_vectors into %s", filled, model, TABLE)

    async def ensure(self, model: str, dimensions: int | None) -> None:
        """(Re)create the table for ``model`` vectors of ``dimensions`` floats unless it already is
        (its own transaction). ``dimensions=None`` only drops what another model left."""
        if self.model == model and self.dimensions == dimensions:
            return
        if dimensions is not None and not 0 < dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"vector size {dimensions} is out of range for pgvector")
        async with self._shape_lock:
            if self.model == model and self.dimensions == dimensions:
                return
            await self._recreate(model, dimensions)

    async def _recreate(self, model: str, dimensions: int | None) -> None:
        async with self.db.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {TABLE}"))
            await conn.execute(settings.delete().where(settings.c.name == SETTING))
            if dimensions is not None:
                await conn.execute(sa.text(
                    f"CREATE TABLE {TABLE} (seq INTEGER PRIMARY KEY REFERENCES memory_vectors (seq) "
                    f"ON DELETE CASCADE, agent_id VARCHAR(36) NOT NULL, embedding vector({int(dimensions)}) NOT NULL)"))
                await conn.execute(sa.text(f"CREATE INDEX ix_{TABLE}_agent ON {TABLE} (agent_id)"))
                await conn.execute(settings.insert().values(
                    name=SETTING, value=json.dumps({"model": model, "dimensions": dimensions}), updated_at=time.time()))
        self.model, self.dimensions = (model, dimensions) if dimensions is not None else (None, None)

    async def fill(self, model: str) -> int:
        """Copy the vectors of ``model`` that ``memory_vectors`` has and the table lacks."""
        if self.model != model or self.dimensions is None:
            return 0
        total, last = 0, -1
        while True:
            async with self.db.begin() as conn:
                rows = (await conn.execute(sa.text(
                    f"SELECT v.seq, v.agent_id, v.vector FROM memory_vectors v WHERE v.model = :model "
                    f"AND v.seq > :last AND octet_length(v.vector) = :size "
                    f"AND NOT EXISTS (SELECT 1 FROM {TABLE} p WHERE p.seq = v.seq) ORDER BY v.seq LIMIT :batch"),
                    {"model": model, "last": last, "size": 4 * self.dimensions, "batch": FILL_BATCH})).all()
                if not rows:
                    return total
                await self.write(conn, model, [(r.seq, r.agent_id, r.vector) for r in rows])
            last = rows[-1].seq
            total += len(rows)

    # -- writing -------------------------------------------------------------------------------
    async def write(self, conn: Any, model: str, rows: list[tuple[int, str, bytes]]) -> int:
        """Insert (seq, agent_id, float32 BLOB) rows inside the caller's transaction, after their
        ``memory_vectors`` rows; rows of another model or size are left out."""
        if self.model != model or self.dimensions is None:
            return 0
        fitting = [{"s": seq, "a": agent_id, "e": vector_literal(blob)} for seq, agent_id, blob in rows
                   if len(blob) == 4 * self.dimensions]
        if fitting:
            await conn.execute(sa.text(
                f"INSERT INTO {TABLE} (seq, agent_id, embedding) VALUES (:s, :a, {VEC.format(name='e')})"), fitting)
        return len(fitting)

    # -- reading -------------------------------------------------------------------------------
    async def search(self, model: str, query: bytes, limit: int, agent_id: str | None = None,
                     level: str | None = None, peer_id: str | None = None) -> list[tuple[int, float]]:
        """(seq, cosine similarity) of the ``limit`` nearest live memories matching the filters,
        best first; empty when the table holds another model's vectors or none."""
        if self.model != model or self.dimensions != len(query) // 4 or limit <= 0:
            return []
        clauses = ["m.deleted = false"]
        params: dict[str, Any] = {"q": vector_literal(query), "limit": limit}
        if agent_id is not None:
            # on both tables: the planner then reads only the agent's rows of each through their
            # agent_id indexes (with it on p alone it hashes every live memory_items row)
            clauses += ["p.agent_id = :agent", "m.agent_id = :agent"]
            params["agent"] = agent_id
        if level is not None:
            clauses.append("m.level = :level")
            params["level"] = level
        if peer_id is not None:
            clauses.append("m.peer_id = :peer")
            params["peer"] = peer_id
        sql = (f"SELECT p.seq, p.embedding <=> {VEC.format(name='q')} AS distance FROM {TABLE} p "
               f"JOIN memory_items m ON m.seq = p.seq WHERE {' AND '.join(clauses)} "
               "ORDER BY distance LIMIT :limit")
        async with self.db.begin() as conn:
            rows = (await conn.execute(sa.text(sql), params)).all()
        return [(int(seq), 1.0 - float(distance)) for seq, distance in rows]

    async def count(self) -> int:
        """Rows in the table (0 before it exists)."""
        if self.model is None:
            return 0
        async with self.db.begin() as conn:
            return int((await conn.execute(sa.text(f"SELECT count(*) FROM {TABLE}"))).scalar() or 0)

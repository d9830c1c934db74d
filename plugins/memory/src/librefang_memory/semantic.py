"""Semantic search of memories: the embedder, the stored vectors and the way they are searched.

Vectors are written to ``memory_vectors`` (the source of truth, in the kernel's database) and to a
KNN index: on SQLite with the ``embeddings`` extra the ``sqlite-vec`` one
(:mod:`librefang_memory.vecindex`), on PostgreSQL with the pgvector extension a ``vector`` column
(:mod:`librefang_memory.pgvector`). A search asks the index; without one (an in-memory SQLite
database, the extra missing, a PostgreSQL server without pgvector or a role that may not create it,
``vector_index = false``) it ranks the stored vectors in-process (one agent's cached in memory, or
all of them for a global search). Which one ranks is logged once at INFO at startup and reported as
``vector_backend`` by ``/api/memory/stats``.

An embedding that fails (a provider that is down) never fails the write of a memory: the memory is
stored and found by full-text search, and logged as not embedded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa

from librefang_memory import embeddings, vecindex
from librefang_memory.config import MemoryConfig
from librefang_memory.models import vectors
from librefang_memory.pgvector import PgVectorIndex

log = logging.getLogger("librefang.memory")
REBUILD_BATCH = 2000
# Query vectors kept for a turn's second search of the same text (recall before the turn, the
# extraction's candidates after it): one embedding per turn instead of two.
QUERY_CACHE_ITEMS = 64
QUERY_CACHE_TTL = 300.0


def make_embedder(kernel: Any, config: MemoryConfig) -> Any:
    """The embedder ``[memory] embeddings`` asks for, or None (off, or wordllama not installed)."""
    mode = config.embeddings
    if mode == "off":
        return None
    if mode == "provider":
        provider = config.embedding_provider
        if provider is None:
            try:
                from librefang_agents.api import registry

                provider = registry(kernel).default_model().get("provider")
            except Exception:  # noqa: BLE001 - no agents plugin: no default provider
                provider = None
        if not provider or provider in ("default", "auto"):
            log.warning('[memory] embeddings = "provider" needs embedding_provider (or a [default_model] '
                        "provider): full-text search only")
            return None
        return embeddings.ProviderEmbedder(kernel, provider, config.embedding_model, config.embedding_dimensions,
                                           config.embedding_timeout_secs)
    if embeddings.available():
        return embeddings.Embedder()
    if mode in ("local", "wordllama"):
        log.warning('[memory] embeddings = "%s" but wordllama is not installed '
                    "(pip install 'librefang-memory[embeddings]'): full-text search only", mode)
    return None


class SemanticSearch:
    """Embedding on write and nearest-neighbour search for one memory service."""

    def __init__(self, kernel: Any, config: MemoryConfig, sqlite_file: Any) -> None:
        self.kernel = kernel
        self.config = config
        self.embedder: Any = None
        self.cache = embeddings.VectorCache(config.vector_cache_items)
        self.index: vecindex.VectorIndex | None = None
        self.pg: PgVectorIndex | None = None
        self._sqlite_file = sqlite_file
        # Until a vector of the model exists, a search need not embed its query (a thread hop and
        # about a millisecond of CPU per query on a store without vectors).
        self.has_vectors = False
        self._queries: OrderedDict[tuple[str, bytes], tuple[float, Any]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.embedder is not None

    @property
    def backend(self) -> str | None:
        """``sqlite-vec``, ``pgvector``, ``in-process``, or None when semantic search is off."""
        if self.embedder is None:
            return None
        if self.pg is not None:
            return "pgvector"
        return "sqlite-vec" if self.index is not None and self.index.is_open else "in-process"

    async def open(self) -> None:
        """Choose the embedder; open the KNN index and bring it in step with ``memory_vectors``."""
        self.embedder = make_embedder(self.kernel, self.config)
        self._queries.clear()
        if self.embedder is None:
            return
        async with self.kernel.db.begin() as conn:
            self.has_vectors = (await conn.execute(
                sa.select(vectors.c.seq).where(vectors.c.model == self.embedder.name).limit(1))).first() is not None
        reason = await self._open_index()
        if reason:
            log.info("semantic search ranks vectors in-process (%s)", reason)
        else:
            log.info("semantic search ranks vectors with %s", self.backend)

    async def _open_index(self) -> str | None:
        """Open the KNN index of this database; None when one is open, otherwise why not."""
        if not self.config.vector_index:
            return "[memory] vector_index = false"
        if self.kernel.db.url.startswith("postgresql"):
            return await self._open_pgvector()
        if self._sqlite_file is None:
            return "no vector index for this database"
        if not vecindex.available():
            return "sqlite-vec or apsw is not installed"
        index = vecindex.VectorIndex(vecindex.index_path(self._sqlite_file))
        try:
            await asyncio.to_thread(index.open)
            await self._reconcile(index)
        except Exception as exc:  # noqa: BLE001 - the in-process ranking still works
            log.warning("the memory vector index cannot be used (%s: %s): ranking in-process",
                        type(exc).__name__, exc)
            await asyncio.to_thread(index.close)
            return "the sqlite-vec index cannot be used"
        self.index = index
        return None

    async def _open_pgvector(self) -> str | None:
        pg = PgVectorIndex(self.kernel.db)
        try:
            reason = await pg.enable()
            if reason is None:
                await pg.open(self.embedder.name)
        except Exception as exc:  # noqa: BLE001 - the in-process ranking still works
            log.warning("the pgvector index cannot be used (%s: %s): ranking in-process", type(exc).__name__, exc)
            return "the pgvector index cannot be used"
        if reason is None:
            self.pg = pg
        return reason

    def close(self) -> None:
        """Close the index (blocking, cheap)."""
        if self.index is not None:
            self.index.close()
            self.index = None

    async def _reconcile(self, index: vecindex.VectorIndex) -> None:
        model = self.embedder.name
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(vectors.c.seq), 0))
                                      .where(vectors.c.model == model))).one()
        stored = (int(row[0]), int(row[1]))
        if stored == (0, 0) and index.model is None:
            return
        if index.model == model and await asyncio.to_thread(index.summary) == stored:
            return
        log.info("rebuilding the memory vector index (%d vectors of %s)", stored[0], model)
        first = True
        last = -1
        while True:
            async with self.kernel.db.begin() as conn:
                rows = [(r.seq, r.agent_id, r.vector) for r in (await conn.execute(
                    sa.select(vectors.c.seq, vectors.c.agent_id, vectors.c.vector)
                    .where(vectors.c.model == model, vectors.c.seq > last)
                    .order_by(vectors.c.seq).limit(REBUILD_BATCH))).all()]
            if not rows:
                break
            last = rows[-1][0]
            if first:
                await asyncio.to_thread(index.rebuild, model, len(rows[0][2]) // 4, rows)
                first = False
            else:
                await asyncio.to_thread(index.upsert, model, rows)

    # -- writing -------------------------------------------------------------------------------
    async def embed(self, added: list[Any]) -> None:
        """Embed and store the vectors of new or changed items (failures are logged, not raised)."""
        if self.embedder is None or not added:
            return
        try:
            matrix = await self.embedder.encode([i.content for i in added])
        except Exception as exc:  # noqa: BLE001 - full-text search still finds the memory
            log.warning("embedding %d memories failed (%s: %s): stored without vectors", len(added),
                        type(exc).__name__, getattr(exc, "message", exc))
            return
        model = self.embedder.name
        rows = [(i.seq, i.agent_id, embeddings.to_blob(v)) for i, v in zip(added, matrix, strict=True)]
        agents = {i.agent_id for i in added}
        for agent_id in agents:
            self.cache.drop(agent_id)
        pg = self.pg
        try:
            await self._store(model, rows, pg)
        except sa.exc.DBAPIError as exc:
            if pg is None:
                raise
            self._lost_pgvector(exc)  # (e.g. DROP EXTENSION vector while running): the vectors still go
            await self._store(model, rows, None)  # to memory_vectors, the source of truth
        self.has_vectors = True
        if self.index is not None:
            await asyncio.to_thread(self.index.upsert, model, rows)
        for agent_id in agents:  # again: a search may have cached the old ones meanwhile
            self.cache.drop(agent_id)

    async def _store(self, model: str, rows: list[tuple[int, str, bytes]], pg: PgVectorIndex | None) -> None:
        if pg is not None:
            await pg.ensure(model, len(rows[0][2]) // 4)  # the table's size is the model's
        async with self.kernel.db.begin() as conn:
            # (on PostgreSQL the delete also removes their pgvector rows: ON DELETE CASCADE)
            await conn.execute(vectors.delete().where(vectors.c.seq.in_([r[0] for r in rows])))
            await conn.execute(vectors.insert(), [
                {"seq": seq, "agent_id": agent_id, "model": model, "vector": blob} for seq, agent_id, blob in rows])
            if pg is not None:
                await pg.write(conn, model, rows)

    def _lost_pgvector(self, exc: Exception) -> None:
        if self.pg is not None:
            self.pg = None
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            log.warning("pgvector cannot be used any more (%s): semantic search ranks vectors in-process "
                        "until the next start", reason)

    async def remove(self, seqs: list[int]) -> None:
        """Forget the index entries of purged items (their rows are gone from ``memory_vectors``)."""
        if self.index is not None and seqs:
            await asyncio.to_thread(self.index.remove, seqs)

    # -- reading -------------------------------------------------------------------------------
    async def search(self, query: str, agent_id: str | None, limit: int, *, level: str | None = None,
                     peer_id: str | None = None) -> list[tuple[int, float]]:
        """(seq, cosine) of the nearest memories at or above ``semantic_min_similarity``, best first.
        pgvector applies the filters (live items, ``level``, ``peer_id``) before the limit; the other
        rankings include deleted and filtered-out items (the caller filters them). An embedding
        failure gives no results."""
        if self.embedder is None or not self.has_vectors or not query.strip():
            return []
        try:
            query_vector = await self.query_vector(query)
        except Exception as exc:  # noqa: BLE001 - the search goes on with full-text results
            log.warning("embedding a query failed (%s): full-text results only", type(exc).__name__)
            return []
        model = self.embedder.name
        ranked = await self._pg_search(model, query_vector, limit, agent_id, level, peer_id)
        if ranked is None and self.index is not None:
            ranked = await asyncio.to_thread(self.index.search, model, embeddings.to_blob(query_vector), limit,
                                             agent_id)
        elif ranked is None:
            blobs = await self._blobs(model, agent_id)
            ranked = await asyncio.to_thread(embeddings.rank, query_vector, blobs, limit) if blobs else []
        return [(seq, score) for seq, score in ranked if score >= self.config.semantic_min_similarity]

    async def query_vector(self, query: str) -> Any:
        """The embedding of a search text, from the last ``QUERY_CACHE_ITEMS`` texts embedded by
        this model in the last ``QUERY_CACHE_TTL`` seconds when it is one of them."""
        model = self.embedder.name
        key = (model, hashlib.blake2b(query.encode(), digest_size=20).digest())
        now = time.monotonic()
        cached = self._queries.get(key)
        if cached is not None and now - cached[0] <= QUERY_CACHE_TTL:
            self._queries.move_to_end(key)
            return cached[1]
        vector = (await self.embedder.encode([query]))[0]
        if self.embedder is not None and self.embedder.name == model:  # not replaced meanwhile
            self._queries[key] = (now, vector)
            self._queries.move_to_end(key)
            while len(self._queries) > QUERY_CACHE_ITEMS:
                self._queries.popitem(last=False)
        return vector

    async def _pg_search(self, model: str, query_vector: Any, limit: int, agent_id: str | None, level: str | None,
                         peer_id: str | None) -> list[tuple[int, float]] | None:
        """The pgvector KNN; None when pgvector is not (or no longer) in use."""
        if self.pg is None:
            return None
        try:
            return await self.pg.search(model, embeddings.to_blob(query_vector), limit, agent_id, level, peer_id)
        except sa.exc.DBAPIError as exc:
            self._lost_pgvector(exc)
            return None

    async def _blobs(self, model: str, agent_id: str | None) -> list[tuple[int, bytes]]:
        blobs = self.cache.get(agent_id) if agent_id is not None else None
        if blobs is None:
            stmt = sa.select(vectors.c.seq, vectors.c.vector).where(vectors.c.model == model)
            if agent_id is not None:
                stmt = stmt.where(vectors.c.agent_id == agent_id)
            async with self.kernel.db.begin() as conn:
                blobs = [(r.seq, r.vector) for r in (await conn.execute(stmt)).all()]
            if agent_id is not None:
                self.cache.put(agent_id, blobs)
        return blobs


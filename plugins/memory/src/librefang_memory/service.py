"""The memory service: proactive memory items (validation, limits, search, maintenance) and the
KV store, one per kernel (``kernel.services["memory"]``)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import sqlalchemy as sa
from librefang.errors import BadRequest, NotFound, PayloadTooLarge
from librefang.jsonbody import json_depth_exceeds

from librefang_memory import embeddings
from librefang_memory.access import AccessRecorder
from librefang_memory.config import MemoryConfig, ProactiveMemoryConfig
from librefang_memory.extract import jaccard, tokens
from librefang_memory.known_agents import KnownAgents
from librefang_memory.kv import KvStore
from librefang_memory.models import items, settings
from librefang_memory.relations import RelationStore
from librefang_memory.semantic import SemanticSearch
from librefang_memory.store import LEVELS, Filter, Item, ItemStore, new_row

log = logging.getLogger("librefang.memory")
DAY = 86_400.0
CONFIG_SETTING = "proactive_memory"


def check_level(level: str | None) -> str | None:
    """``level`` when it is one of user, session, agent (or None); 400 ``invalid_level`` otherwise."""
    if level is None or level in LEVELS:
        return level
    raise BadRequest(f"unknown memory level {level!r}: expected one of {', '.join(LEVELS)}", code="invalid_level")


class MemoryService:
    """Everything the routes, tools and runtime hooks of the memory plugin do."""

    def __init__(self, kernel: Any, config: MemoryConfig, proactive: ProactiveMemoryConfig) -> None:
        self.kernel = kernel
        self.config = config
        self.proactive = proactive
        self.kv = KvStore(kernel.db, config)
        self.store = ItemStore(kernel.db)
        self.relations = RelationStore(kernel.db)
        self.access = AccessRecorder(kernel.db)
        self.known_agents = KnownAgents()
        from librefang_memory.fts import sqlite_path

        sqlite_file = sqlite_path(kernel.db.url) if self.store.dialect == "sqlite" else None
        self.semantic = SemanticSearch(kernel, config, sqlite_file)
        self.pipeline: Any = None  # librefang_memory.pipeline.Pipeline, set at startup

    async def open(self) -> None:
        """Open the search connections; apply the configuration saved by ``PATCH /api/memory/config``
        over the file's values."""
        if self.store.reader is not None:
            self.store.reader.open()
        await self.semantic.open()
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(settings.c.value).where(settings.c.name == CONFIG_SETTING))).first()
        if row is not None:
            values = {**self.proactive.model_dump(), **json.loads(row.value)}
            self.proactive = ProactiveMemoryConfig.model_validate(values)

    # -- configuration ----------------------------------------------------------------------
    async def patch_config(self, changes: dict[str, Any]) -> ProactiveMemoryConfig:
        """Validate and apply ``changes`` to ``[proactive_memory]``, saved in the database."""
        unknown = sorted(set(changes) - set(ProactiveMemoryConfig.model_fields))
        if unknown:
            raise BadRequest(f"unknown config keys: {', '.join(unknown)}", code="invalid_config")
        from librefang.routing import format_validation_error
        from pydantic import ValidationError

        try:
            new = ProactiveMemoryConfig.model_validate({**self.proactive.model_dump(), **changes})
        except ValidationError as exc:
            raise BadRequest(format_validation_error(exc, "body"), code="invalid_config") from None
        saved: dict[str, Any] = {}
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(settings.c.value).where(settings.c.name == CONFIG_SETTING))).first()
            if row is not None:
                saved = json.loads(row.value)
            saved.update(new.model_dump(include=set(changes)))
            await conn.execute(settings.delete().where(settings.c.name == CONFIG_SETTING))
            await conn.execute(settings.insert().values(name=CONFIG_SETTING, value=json.dumps(saved),
                                                        updated_at=time.time()))
        self.proactive = new
        return new

    # -- validation -------------------------------------------------------------------------
    def check_content(self, content: Any) -> str:
        if not isinstance(content, str) or not content.strip():
            raise BadRequest("content must be a non-empty string", code="invalid_content")
        if len(content) > self.config.max_content_chars:
            raise PayloadTooLarge(f"content is longer than {self.config.max_content_chars} characters",
                                  code="content_too_large")
        return content.strip()

    def check_metadata(self, metadata: Any) -> dict[str, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, dict):
            raise BadRequest("metadata must be a JSON object", code="invalid_metadata")
        if json_depth_exceeds(metadata, 8):
            raise BadRequest("metadata nests too deeply", code="invalid_metadata")
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
        if size > self.config.max_metadata_bytes:
            raise PayloadTooLarge(f"metadata is larger than {self.config.max_metadata_bytes} bytes",
                                  code="metadata_too_large")
        return metadata

    # -- writing ----------------------------------------------------------------------------
    async def add_many(self, agent_id: str, entries: list[dict[str, Any]], *, source: str = "api",
                       peer_id: str | None = None) -> list[Item]:
        """Store memories for one agent (each entry: content, level, category, metadata, confidence,
        optional created_at), evicting the weakest when the agent goes over its limit."""
        if len(entries) > self.config.max_batch_items:
            raise PayloadTooLarge(f"at most {self.config.max_batch_items} memories per request", code="too_many_items")
        rows = []
        now = time.time()
        for entry in entries:
            level = check_level(entry.get("level") or "session")
            rows.append(new_row(
                agent_id=agent_id, content=self.check_content(entry.get("content")), level=level,
                category=entry.get("category"), metadata=self.check_metadata(entry.get("metadata")),
                source=entry.get("source") or source, confidence=float(entry.get("confidence", 1.0)),
                peer_id=entry.get("peer_id", peer_id), now=entry.get("created_at") or now))
            if entry.get("updated_at"):
                rows[-1]["updated_at"] = entry["updated_at"]
        added = await self.store.insert(rows)
        await self.semantic.embed(added)
        await self.enforce_limit(agent_id)
        return added

    async def insert_batch(self, rows: list[dict[str, Any]]) -> int:
        """Insert prepared rows (see :func:`librefang_memory.store.new_row`) in one transaction,
        without limits or embeddings (bulk loading and the benchmark)."""
        await self.store.insert(rows, read_back=False)
        return len(rows)

    async def enforce_limit(self, agent_id: str) -> int:
        """Soft-delete the agent's weakest memories (lowest confidence, then oldest) above
        ``max_memories_per_agent``; returns how many."""
        limit = self.proactive.max_memories_per_agent
        live = await self.store.count(Filter(agent_id=agent_id))
        if live <= limit:
            return 0
        async with self.kernel.db.begin() as conn:
            victims = [r.id for r in (await conn.execute(
                sa.select(items.c.id).where(items.c.agent_id == agent_id, items.c.deleted.is_(False))
                .order_by(items.c.confidence, items.c.created_at, items.c.seq).limit(live - limit))).all()]
        await self.store.soft_delete(items.c.id.in_(victims))
        return len(victims)

    async def update(self, memory_id: str, changes: dict[str, Any]) -> Item:
        """Change content, category, metadata, level or confidence; the old values go to the history."""
        item = await self.get(memory_id)
        values: dict[str, Any] = {}
        if changes.get("content") is not None:
            values["content"] = self.check_content(changes["content"])
        if changes.get("metadata") is not None:
            values["metadata"] = self.check_metadata(changes["metadata"])
        if changes.get("level") is not None:
            values["level"] = check_level(changes["level"])
        for key in ("category", "confidence"):
            if changes.get(key) is not None:
                values[key] = changes[key]
        if not values:
            raise BadRequest("nothing to update: give content, metadata, category, level or confidence",
                             code="invalid_body")
        updated = await self.store.update(item, values)
        if "content" in values:
            await self.semantic.embed([updated])
        return updated

    async def get(self, memory_id: str) -> Item:
        item = await self.store.get(memory_id)
        if item is None:
            raise NotFound(f"memory {memory_id} not found", code="memory_not_found")
        return item

    async def delete(self, memory_id: str) -> None:
        item = await self.get(memory_id)
        await self.store.soft_delete(items.c.seq == item.seq)

    async def bulk_delete(self, ids: list[str]) -> dict[str, Any]:
        if len(ids) > self.config.max_batch_items:
            raise PayloadTooLarge(f"at most {self.config.max_batch_items} ids per request", code="too_many_items")
        deleted = await self.store.soft_delete(items.c.id.in_(ids)) if ids else []
        return {"deleted": len(deleted), "not_found": [i for i in ids if i not in set(deleted)]}

    async def clear(self, agent_id: str, level: str | None = None) -> int:
        clauses = [items.c.agent_id == agent_id]
        if level is not None:
            clauses.append(items.c.level == check_level(level))
        return len(await self.store.soft_delete(sa.and_(*clauses)))

    # -- search -----------------------------------------------------------------------------
    async def search(self, query: str, *, agent_id: str | None = None, level: str | None = None, limit: int = 10,
                     peer_id: str | None = None, touch: bool = True) -> tuple[list[Item], str]:
        """Best matches for ``query``: FTS (BM25), fused with cosine ranking by reciprocal rank when
        embeddings are on. Returns (items, mode) with mode ``fts`` or ``hybrid``."""
        check_level(level)
        lexical = self.store.search(query, agent_id=agent_id, level=level, limit=limit, peer_id=peer_id)
        mode = "fts"
        if not (self.semantic.enabled and self.semantic.has_vectors and query.strip()):
            found = await lexical
        else:
            # Both rankings at once (each waits on its own worker thread); more than asked from the
            # vectors: deleted or filtered-out items are dropped after ranking.
            found, semantic = await asyncio.gather(
                lexical, self.semantic.search(query, agent_id, limit * 4 if level or peer_id else limit * 2,
                                                      level=level, peer_id=peer_id))
            if semantic:
                mode = "hybrid"
                fused = embeddings.reciprocal_rank_fusion([[i.seq for i in found], [s for s, _ in semantic]])
                by_seq = {i.seq: i for i in found}
                missing = [s for s, _ in fused if s not in by_seq]
                by_seq.update(await self.store.by_seq(missing))
                result = []
                for seq, score in fused:
                    item = by_seq.get(seq)
                    if item is None or item.deleted or (level and item.level != level) \
                            or (peer_id and item.peer_id != peer_id):
                        continue
                    item.score = score
                    result.append(item)
                found = result[:limit]
        if touch:
            self.access.record([i.seq for i in found])
        return found, mode

    # -- statistics -------------------------------------------------------------------------
    async def stats(self, agent_id: str | None = None) -> dict[str, Any]:
        f = Filter(agent_id=agent_id)
        levels = await self.store.counts_by("level", f)
        cfg = self.proactive
        body = {
            "total": sum(levels.values()), "user_count": levels.get("user", 0),
            "session_count": levels.get("session", 0), "agent_count": levels.get("agent", 0),
            "categories": await self.store.counts_by("category", f), "enabled": cfg.enabled,
            "auto_memorize_enabled": cfg.auto_memorize, "auto_retrieve_enabled": cfg.auto_retrieve,
            "llm_extraction": self.proactive.extraction_model is not None,
            "semantic_search": self.semantic.enabled, "vector_backend": self.semantic.backend,
        }
        if agent_id is not None:
            body["agent_id"] = agent_id
        return body

    # -- maintenance ------------------------------------------------------------------------
    async def cleanup(self) -> dict[str, Any]:
        """Delete session-level memories older than ``session_ttl_hours`` and purge soft-deleted rows
        older than ``soft_delete_retention_days``."""
        now = time.time()
        expired = await self.store.soft_delete(sa.and_(
            items.c.level == "session", items.c.created_at < now - self.proactive.session_ttl_hours * 3600))
        purged = await self.store.purge(sa.and_(
            items.c.deleted.is_(True),
            items.c.deleted_at < now - self.proactive.soft_delete_retention_days * DAY))
        await self.semantic.remove(purged)
        return {"removed": len(expired), "purged": len(purged), "session_ttl_hours": self.proactive.session_ttl_hours}

    async def decay(self, now: float | None = None) -> dict[str, Any]:
        """For memories not accessed for more than a day:
        ``confidence · e^(−(rate/boost)·days_since_access)``, ``boost = min(1 + log2(access_count), 4)``
        (an item never accessed has boost 1). A run covers only the days since the later of the last
        access and the last run, so running it hourly gives the same result as running it once."""
        now = time.time() if now is None else now
        rate = self.proactive.confidence_decay_rate
        async with self.kernel.db.begin() as conn:
            rows = (await conn.execute(sa.select(items.c.seq, items.c.confidence, items.c.accessed_at,
                                                 items.c.access_count, items.c.decayed_at)
                                       .where(items.c.deleted.is_(False), items.c.accessed_at < now - DAY))).all()
            changes = []
            for row in rows:
                boost = min(1.0 + math.log2(row.access_count), 4.0) if row.access_count >= 1 else 1.0
                since = max(row.accessed_at, row.decayed_at or 0.0)
                days = max(0.0, now - since) / DAY
                changes.append({"s": row.seq, "c": row.confidence * math.exp(-(rate / boost) * days), "t": now})
            if changes:
                await conn.execute(items.update().where(items.c.seq == sa.bindparam("s"))
                                   .values(confidence=sa.bindparam("c"), decayed_at=sa.bindparam("t")), changes)
        return {"decayed": len(changes), "rate": rate}

    async def run_maintenance(self) -> None:
        """Decay and cleanup every ``maintenance_interval_hours`` (read each round: PATCH applies)."""
        import asyncio

        while True:
            hours = self.proactive.maintenance_interval_hours
            await asyncio.sleep(hours * 3600 if hours > 0 else 3600)
            if self.proactive.maintenance_interval_hours <= 0 or not self.proactive.enabled:
                continue
            try:
                decayed = await self.decay()
                cleaned = await self.cleanup()
                log.info("memory maintenance: %s memories decayed, %s expired, %s purged", decayed["decayed"],
                         cleaned["removed"], cleaned["purged"])
            except Exception as exc:  # noqa: BLE001 - retried next round
                log.warning("memory maintenance failed: %s: %s", type(exc).__name__, exc)

    async def duplicates(self, agent_id: str) -> list[list[Item]]:
        """Groups of near-duplicate memories (similarity ≥ ``duplicate_threshold``), newest first
        within a group."""
        live = await self.store.all(Filter(agent_id=agent_id), limit=self.proactive.max_memories_per_agent * 2)
        threshold = self.proactive.duplicate_threshold
        return await _to_thread(_group_duplicates, live, threshold)

    async def consolidate(self, agent_id: str) -> dict[str, Any]:
        """Keep the newest memory of each duplicate group and delete the rest; drop expired
        session memories of the agent."""
        groups = await self.duplicates(agent_id)
        losers = [i.id for group in groups for i in group[1:]]
        removed = await self.store.soft_delete(items.c.id.in_(losers)) if losers else []
        expired = await self.store.soft_delete(sa.and_(
            items.c.agent_id == agent_id, items.c.level == "session",
            items.c.created_at < time.time() - self.proactive.session_ttl_hours * 3600))
        return {"agent_id": agent_id, "groups": len(groups), "merged": len(removed), "expired": len(expired),
                "remaining": await self.store.count(Filter(agent_id=agent_id))}


def _group_duplicates(live: list[Item], threshold: float) -> list[list[Item]]:
    # Only pairs sharing a word can reach the threshold: an inverted index avoids comparing all pairs.
    sets = [tokens(i.content) for i in live]
    index: dict[str, list[int]] = {}
    for position, words in enumerate(sets):
        for word in words:
            index.setdefault(word, []).append(position)
    parent = list(range(len(live)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, words in enumerate(sets):
        candidates = {b for word in words for b in index[word] if b > a}
        for b in candidates:
            if jaccard(words, sets[b]) >= threshold or live[a].content.strip().lower() == live[b].content.strip().lower():
                parent[root(b)] = root(a)
    groups: dict[int, list[Item]] = {}
    for position, item in enumerate(live):
        groups.setdefault(root(position), []).append(item)
    found = [sorted(g, key=lambda i: (i.created_at, i.seq), reverse=True) for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: g[0].created_at, reverse=True)


async def _to_thread(fn: Any, *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args)

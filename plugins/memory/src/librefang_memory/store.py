"""Proactive memory items in the database: rows, history, and full-text search.

Search is SQLite FTS5 ranked by BM25 (external-content index kept in step by triggers), PostgreSQL
full-text search (``to_tsvector('simple', …)`` with a GIN index) on PostgreSQL, and ``LIKE`` on any
other database. Each row carries its agent id as a single token (``agent_tag``) in the FTS index,
so a per-agent search is one FTS query that never ranks other agents' rows.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from librefang_memory.models import history, items

LEVELS = ("user", "session", "agent")
WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_TERMS = 16
# Words that carry no meaning for recall; searching them would rank every row.
STOPWORDS = frozenset(
    "a an and are as at be but by do does did for from has have had he her him his how i i'm is it its "
    "me my of on or our she so that the their them they this to too us was we were what when where which "
    "who why will with you your yours can could would should about into than then there these those just "
    "also not no yes".split()
)


def agent_tag(agent_id: str) -> str:
    """The FTS token of an agent id (letters and digits only, so the tokenizer keeps it whole)."""
    return "a" + agent_id.replace("-", "")


def query_terms(text: str) -> list[str]:
    """The searchable words of ``text``: lower-cased, stop words dropped, de-duplicated, at most 16."""
    terms: list[str] = []
    for word in WORD.findall(text.lower()):
        if word not in STOPWORDS and word not in terms and len(word) > 1:
            terms.append(word)
        if len(terms) >= MAX_QUERY_TERMS:
            break
    return terms


def iso(ts: float | None) -> str | None:
    """An RFC 3339 UTC timestamp (``None`` stays ``None``)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Item:
    """One memory row."""

    seq: int
    id: str
    agent_id: str
    peer_id: str | None
    level: str
    category: str | None
    content: str
    metadata: dict[str, Any]
    source: str
    confidence: float
    created_at: float
    updated_at: float
    accessed_at: float
    access_count: int
    deleted: bool = False
    score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The API shape of a memory (``MemoryItem``)."""
        body = {
            "id": self.id, "content": self.content, "level": self.level, "category": self.category,
            "metadata": self.metadata, "source": self.source, "confidence": round(self.confidence, 6),
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "accessed_at": iso(self.accessed_at), "access_count": self.access_count,
            "agent_id": self.agent_id, "peer_id": self.peer_id,
        }
        if self.score is not None:
            body["score"] = round(self.score, 6)
        return body


class _RowView:
    """Attribute access to a ``sqlite3.Row`` (what :func:`_item` reads)."""

    __slots__ = ("_row",)

    def __init__(self, row: Any) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return self._row[name]


def _item(row: Any) -> Item:
    return Item(row.seq, row.id, row.agent_id, row.peer_id, row.level, row.category, row.content,
                json.loads(row.metadata or "{}"), row.source, row.confidence, row.created_at, row.updated_at,
                row.accessed_at, row.access_count, bool(row.deleted))


def new_row(*, agent_id: str, content: str, level: str, category: str | None, metadata: dict[str, Any],
            source: str, confidence: float, peer_id: str | None, now: float | None = None) -> dict[str, Any]:
    """The column values of a new item."""
    now = time.time() if now is None else now
    return {
        "id": str(uuid.uuid4()), "agent_id": agent_id, "agent_tag": agent_tag(agent_id), "peer_id": peer_id,
        "level": level, "category": category, "content": content,
        "metadata": json.dumps(metadata, ensure_ascii=False, separators=(",", ":")), "source": source,
        "confidence": confidence, "created_at": now, "updated_at": now, "accessed_at": now, "access_count": 0,
        "deleted": False, "deleted_at": None,
    }


@dataclass
class Filter:
    """What a listing selects (``None`` = any)."""

    agent_id: str | None = None
    level: str | None = None
    category: str | None = None
    peer_id: str | None = None
    user: str | None = None  # agent id or peer id (``/api/memory/user/{user_id}``)


class ItemStore:
    """Queries over ``memory_items`` and ``memory_history`` through the kernel's database."""

    def __init__(self, db: Any) -> None:
        from librefang_memory.fts import ReadPool, TermStats, sqlite_path
        from librefang_memory.presence import AgentPresence

        self.db = db
        self.dialect = db.engine.dialect.name if db.engine is not None else "sqlite"
        path = sqlite_path(db.url) if self.dialect == "sqlite" else None
        self.reader = ReadPool(path) if path is not None else None
        self.term_stats = TermStats(self.reader) if self.reader is not None else None
        # Which agents have memories (SQLite: this daemon sees every write; see presence.py).
        self.presence = AgentPresence(enabled=self.dialect == "sqlite")

    def close(self) -> None:
        """Close the search connections."""
        if self.reader is not None:
            self.reader.close()

    # -- writing -----------------------------------------------------------------------------
    async def insert(self, rows: list[dict[str, Any]], conn: Any = None, *, read_back: bool = True) -> list[Item]:
        """Insert rows (one transaction); returns them with their seq (nothing without ``read_back``).

        The ADD entry of a memory's history is not written: it is the row itself (its creation time,
        and its first content, which the first UPDATE entry keeps), see :meth:`history_of`."""
        if not rows:
            return []
        if conn is None:
            try:
                async with self.db.begin() as conn:
                    return await self.insert(rows, conn, read_back=read_back)
            finally:  # committed (or failed, or cancelled: it may have committed): the agents have memories
                self.presence.inserted({r["agent_id"] for r in rows})
        # (with a ``conn`` the caller commits, and calls ``self.presence.inserted`` after its commit)
        if self.dialect == "sqlite":
            # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing costs
            # about a third of a bulk insert here, and these values need no conversion.
            columns = list(rows[0])
            sql = f"INSERT INTO memory_items ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
            await conn.exec_driver_sql(sql, [tuple(r[c] for c in columns) for r in rows])
        else:
            await conn.execute(items.insert(), rows)
        if not read_back:
            return []
        ids = [r["id"] for r in rows]
        found: dict[str, Item] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for row in (await conn.execute(sa.select(items).where(items.c.id.in_(chunk)))).all():
                found[row.id] = _item(row)
        return [found[i] for i in ids]

    async def update(self, item: Item, values: dict[str, Any], event: str = "UPDATE") -> Item:
        """Change an item's columns and record the change in its history."""
        now = time.time()
        values = {**values, "updated_at": now}
        if "metadata" in values and not isinstance(values["metadata"], str):
            values["metadata"] = json.dumps(values["metadata"], ensure_ascii=False, separators=(",", ":"))
        async with self.db.begin() as conn:
            await conn.execute(items.update().where(items.c.seq == item.seq).values(**values))
            await conn.execute(history.insert().values(
                memory_id=item.id, event=event, old_content=item.content,
                new_content=values.get("content", item.content),
                old_metadata=json.dumps(item.metadata, ensure_ascii=False, separators=(",", ":")),
                new_metadata=values.get("metadata"), created_at=now))
            row = (await conn.execute(sa.select(items).where(items.c.seq == item.seq))).first()
        return _item(row)

    async def soft_delete(self, where: Any) -> list[str]:
        """Mark the live items matching ``where`` deleted (with a DELETE history entry); their ids."""
        now = time.time()
        async with self.db.begin() as conn:
            rows = (await conn.execute(
                sa.select(items.c.id, items.c.content, items.c.agent_id).where(where, items.c.deleted.is_(False)))).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                await conn.execute(items.update().where(items.c.id.in_(chunk)).values(deleted=True, deleted_at=now))
            await conn.execute(history.insert(), [
                {"memory_id": r.id, "event": "DELETE", "old_content": r.content, "new_content": None,
                 "old_metadata": None, "new_metadata": None, "created_at": now} for r in rows])
        self.presence.removed({r.agent_id for r in rows})  # whether any is left is asked again
        return ids

    async def purge(self, where: Any) -> list[int]:
        """Remove rows for good (with their history and vectors); their seqs."""
        from librefang_memory.models import vectors

        async with self.db.begin() as conn:
            rows = (await conn.execute(sa.select(items.c.seq, items.c.id, items.c.agent_id).where(where))).all()
            for start in range(0, len(rows), 500):
                chunk = rows[start:start + 500]
                await conn.execute(history.delete().where(history.c.memory_id.in_([r.id for r in chunk])))
                await conn.execute(vectors.delete().where(vectors.c.seq.in_([r.seq for r in chunk])))
                await conn.execute(items.delete().where(items.c.seq.in_([r.seq for r in chunk])))
        self.presence.removed({r.agent_id for r in rows})
        return [r.seq for r in rows]

    async def may_have_items(self, agent_id: str) -> bool:
        """False when the agent has no live memory (known, or looked up once with an indexed
        ``LIMIT 1`` query); True when it has, or where that is not kept (PostgreSQL: search as always)."""
        known = self.presence.known(agent_id)
        if known is not None:
            return known
        if not self.presence.enabled:
            return True
        generation = self.presence.generation
        if self.reader is not None:
            found = bool(await self.reader.aquery(
                "SELECT 1 FROM memory_items WHERE agent_id = :a AND deleted = 0 LIMIT 1", {"a": agent_id}))
        else:
            async with self.db.begin() as conn:
                found = (await conn.execute(sa.select(items.c.seq).where(
                    items.c.agent_id == agent_id, items.c.deleted.is_(False)).limit(1))).first() is not None
        self.presence.learned(agent_id, found, generation)
        return found

    # -- reading -----------------------------------------------------------------------------
    async def get(self, memory_id: str, *, include_deleted: bool = False) -> Item | None:
        query = sa.select(items).where(items.c.id == memory_id)
        if not include_deleted:
            query = query.where(items.c.deleted.is_(False))
        async with self.db.begin() as conn:
            row = (await conn.execute(query)).first()
        return _item(row) if row is not None else None

    @staticmethod
    def _where(f: Filter) -> list[Any]:
        clauses: list[Any] = [items.c.deleted.is_(False)]
        if f.agent_id is not None:
            clauses.append(items.c.agent_id == f.agent_id)
        if f.level is not None:
            clauses.append(items.c.level == f.level)
        if f.category is not None:
            clauses.append(items.c.category == f.category)
        if f.peer_id is not None:
            clauses.append(items.c.peer_id == f.peer_id)
        if f.user is not None:
            clauses.append(sa.or_(items.c.agent_id == f.user, items.c.peer_id == f.user))
        return clauses

    async def page(self, f: Filter, offset: int, limit: int) -> tuple[list[Item], int]:
        """Newest first: (items of the page, total matching)."""
        clauses = self._where(f)
        async with self.db.begin() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(items).where(*clauses))).scalar_one()
            rows = (await conn.execute(sa.select(items).where(*clauses)
                                       .order_by(items.c.created_at.desc(), items.c.seq.desc())
                                       .offset(offset).limit(limit))).all()
        return [_item(r) for r in rows], int(total)

    async def all(self, f: Filter, limit: int | None = None) -> list[Item]:
        """Every live item matching ``f``, oldest first."""
        query = sa.select(items).where(*self._where(f)).order_by(items.c.created_at, items.c.seq)
        if limit is not None:
            query = query.limit(limit)
        async with self.db.begin() as conn:
            return [_item(r) for r in (await conn.execute(query)).all()]

    async def count(self, f: Filter) -> int:
        async with self.db.begin() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(items).where(*self._where(f)))).scalar_one())

    async def counts_by(self, column: str, f: Filter) -> dict[str, int]:
        """Live items per value of ``column`` (``level`` or ``category``)."""
        col = items.c[column]
        async with self.db.begin() as conn:
            rows = (await conn.execute(sa.select(col, sa.func.count()).where(*self._where(f)).group_by(col))).all()
        return {(r[0] or "uncategorized"): int(r[1]) for r in rows}

    async def by_seq(self, seqs: list[int]) -> dict[int, Item]:
        """Items by row id (deleted ones included)."""
        if not seqs:
            return {}
        if self.reader is not None:  # one worker-thread hop on the read pool (a search's hot path)
            from librefang_memory.fts import COLUMNS

            found: dict[int, Item] = {}
            for start in range(0, len(seqs), 500):
                chunk = seqs[start:start + 500]
                marks = ", ".join(f":s{n}" for n in range(len(chunk)))
                rows = await self.reader.aquery(f"SELECT {COLUMNS} FROM memory_items WHERE seq IN ({marks})",
                                                {f"s{n}": seq for n, seq in enumerate(chunk)})
                found.update((row["seq"], _item(_RowView(row))) for row in rows)
            return found
        async with self.db.begin() as conn:
            rows = (await conn.execute(sa.select(items).where(items.c.seq.in_(seqs)))).all()
        return {r.seq: _item(r) for r in rows}

    async def history_of(self, memory_id: str) -> list[dict[str, Any]]:
        """Every change of a memory, oldest first, starting with its ADD (also of a deleted one)."""
        async with self.db.begin() as conn:
            item = (await conn.execute(sa.select(items.c.content, items.c.metadata, items.c.created_at)
                                       .where(items.c.id == memory_id))).first()
            rows = (await conn.execute(sa.select(history).where(history.c.memory_id == memory_id)
                                       .order_by(history.c.id))).all()
        if item is None:
            return []
        changes = [r for r in rows if r.event != "DELETE"]
        first = changes[0] if changes else None
        added = {"event": "ADD", "old_content": None,
                 "new_content": first.old_content if first is not None else item.content, "old_metadata": None,
                 "new_metadata": json.loads((first.old_metadata if first is not None else item.metadata) or "{}"),
                 "created_at": iso(item.created_at)}
        return [added] + [{
            "event": r.event, "old_content": r.old_content, "new_content": r.new_content,
            "old_metadata": json.loads(r.old_metadata) if r.old_metadata else None,
            "new_metadata": json.loads(r.new_metadata) if r.new_metadata else None,
            "created_at": iso(r.created_at)} for r in rows]

    # -- full-text search -------------------------------------------------------------------
    async def search(self, text: str, *, agent_id: str | None, level: str | None, limit: int,
                     peer_id: str | None = None) -> list[Item]:
        """Items matching the words of ``text``, best first (``score``: higher is better)."""
        terms = query_terms(text)
        if not terms or limit <= 0:
            return []
        if self.dialect == "sqlite":
            return await self._search_fts5(terms, agent_id, level, peer_id, limit)
        return await self._search_generic(terms, agent_id, level, peer_id, limit)

    async def _search_fts5(self, terms: list[str], agent_id: str | None, level: str | None,
                           peer_id: str | None, limit: int) -> list[Item]:
        from librefang_memory.fts import match_expression, search_sql

        tag = agent_tag(agent_id) if agent_id else None
        if self.reader is not None:
            rows: list[Any] = [_RowView(r) for r in await self.reader.search(
                self.term_stats, terms, tag, level, peer_id, limit)]
        else:
            params = {"match": match_expression(terms, tag), "level": level, "peer": peer_id, "limit": limit,
                      # more than asked when rows may be dropped after ranking
                      "fetch": limit if level is None and peer_id is None else limit * 8}
            sql = search_sql(level is not None, peer_id is not None)
            async with self.db.begin() as conn:
                rows = list((await conn.execute(sa.text(sql), params)).all())
        found = []
        for row in rows:
            item = _item(row)
            item.score = -float(row.score)  # bm25() is lower-is-better
            found.append(item)
        return found

    async def _search_generic(self, terms: list[str], agent_id: str | None, level: str | None,
                              peer_id: str | None, limit: int) -> list[Item]:
        clauses = self._where(Filter(agent_id=agent_id, level=level, peer_id=peer_id))
        if self.dialect == "postgresql":
            vector = sa.func.to_tsvector("simple", items.c.content)
            query_ = sa.func.to_tsquery("simple", " | ".join(re.sub(r"\W", "", t) or "x" for t in terms))
            score = sa.func.ts_rank(vector, query_)
            stmt = (sa.select(items, score.label("score")).where(*clauses, vector.op("@@")(query_))
                    .order_by(score.desc()).limit(limit))
        else:
            hits = [sa.case((items.c.content.ilike("%" + t.replace("_", "/_") + "%", escape="/"), 1), else_=0)
                    for t in terms]
            score = sum(hits[1:], hits[0])
            stmt = (sa.select(items, score.label("score")).where(*clauses, score > 0)
                    .order_by(score.desc(), items.c.created_at.desc()).limit(limit))
        async with self.db.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        found = []
        for row in rows:
            item = _item(row)
            item.score = float(row.score)
            found.append(item)
        return found

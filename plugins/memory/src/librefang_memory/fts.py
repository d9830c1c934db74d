"""The SQLite full-text search path: FTS5 ranked by BM25 on a small pool of read connections.

A search is one statement; through SQLAlchemy's async engine it costs a pool checkout, BEGIN,
the query and COMMIT, each a hop to aiosqlite's thread. Here the whole search runs in one worker
thread on a plain ``sqlite3`` connection to the same file (WAL: readers never block the writer
and see every committed row), which is most of the latency budget saved on a loaded machine.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

COLUMNS = ("seq, id, agent_id, peer_id, level, category, content, metadata, source, confidence, created_at, "
           "updated_at, accessed_at, access_count, deleted")
MAX_CONNECTIONS = 2  # opened at startup, so the daemon's file descriptors stay constant
# A word in more than this share of all memories (and more than COMMON_MIN_DOCS) says little about
# which memory is meant; when the query has a rarer word, ranking skips it. Ranking every row that
# holds a near-universal word is what makes a full-text query slow.
COMMON_SHARE = 0.05
COMMON_MIN_DOCS = 500
STATS_TTL = 30.0
MAX_CACHED_TERMS = 20_000


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def match_expression(terms: list[str], tag: str | None) -> str:
    """The FTS5 query: any of ``terms`` in ``content`` (each quoted: no query syntax gets through),
    and the agent's token in ``agent_tag`` when ``tag`` is given."""
    words = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
    match = f"content : ({words})"
    return f"agent_tag : {tag} AND {match}" if tag else match


def search_sql(level: bool, peer: bool) -> str:
    """Rank inside the FTS table (its ``ORDER BY … LIMIT`` keeps only the best rows), then join and
    drop deleted or filtered-out rows (the caller fetches more than asked when rows may be dropped)."""
    return (
        f"SELECT {', '.join('m.' + c.strip() for c in COLUMNS.split(','))}, r.score FROM "
        "(SELECT rowid AS seq, bm25(memory_items_fts, 1.0, 0.0) AS score FROM memory_items_fts "
        "WHERE memory_items_fts MATCH :match ORDER BY score LIMIT :fetch) r "
        "JOIN memory_items m ON m.seq = r.seq WHERE m.deleted = 0"
        + (" AND m.level = :level" if level else "") + (" AND m.peer_id = :peer" if peer else "")
        + " ORDER BY r.score LIMIT :limit"
    )


class ReadPool:
    """Up to ``MAX_CONNECTIONS`` read-only connections, used from worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Last in, first out: with one search at a time the same connection (and its warm page
        # cache) serves them all; a FIFO would alternate and keep two half-warm caches.
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.closed = False

    def open(self) -> None:
        """Open every connection now (blocking, cheap: no I/O until the first query)."""
        for _ in range(MAX_CONNECTIONS - len(self._all)):
            self._idle.put(self._new_connection())

    def _connection(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._new_connection()

    def _new_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._all.append(conn)
        return conn

    def query(self, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        """Run one read statement (blocking; call through :meth:`aquery`)."""
        with self._slots:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                self._idle.put(conn)

    async def aquery(self, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        """:meth:`query` in a worker thread."""
        if self.closed:
            raise RuntimeError("the memory read pool is closed")
        return await asyncio.to_thread(self.query, sql, params)

    async def search(self, stats: TermStats, terms: list[str], tag: str | None, level: str | None,
                     peer: str | None, limit: int) -> list[sqlite3.Row]:
        """Prune common words and run the ranked query, in one worker-thread hop."""
        if self.closed:
            raise RuntimeError("the memory read pool is closed")

        def run() -> list[sqlite3.Row]:
            params = {"match": match_expression(stats.prune(terms), tag), "level": level, "peer": peer,
                      "limit": limit, "fetch": limit if level is None and peer is None else limit * 8}
            return self.query(search_sql(level is not None, peer is not None), params)

        return await asyncio.to_thread(run)

    def close(self) -> None:
        """Close every connection (at plugin shutdown)."""
        self.closed = True
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class TermStats:
    """Document frequencies of words (``memory_items_vocab``), cached for ``STATS_TTL`` seconds."""

    def __init__(self, pool: ReadPool) -> None:
        self.pool = pool
        self._docs: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._total: tuple[float, int] = (float("-inf"), 0)

    def _lookup(self, terms: list[str]) -> tuple[int, dict[str, int]]:
        now = time.monotonic()
        if now - self._total[0] > STATS_TTL:
            # The highest row id, not count(*): an O(log n) lookup instead of a scan of an index,
            # and close enough for a threshold (the FTS index holds soft-deleted rows too).
            row = self.pool.query("SELECT coalesce(max(seq), 0) AS n FROM memory_items", {})
            self._total = (now, int(row[0]["n"]))
        known = {t: v[1] for t in terms if (v := self._docs.get(t)) is not None and now - v[0] <= STATS_TTL}
        missing = [t for t in terms if t not in known]
        if missing:
            marks = ", ".join(f":t{i}" for i in range(len(missing)))
            rows = self.pool.query(f"SELECT term, doc FROM memory_items_vocab WHERE term IN ({marks})",
                                   {f"t{i}": t for i, t in enumerate(missing)})
            found = {r["term"]: int(r["doc"]) for r in rows}
            for term in missing:
                known[term] = found.get(term, 0)
                self._docs[term] = (now, known[term])
                self._docs.move_to_end(term)
            while len(self._docs) > MAX_CACHED_TERMS:
                self._docs.popitem(last=False)
        return self._total[1], known

    def prune(self, terms: list[str]) -> list[str]:
        """``terms`` without near-universal words, as long as a rarer word remains (blocking)."""
        if len(terms) < 2:
            return terms
        total, docs = self._lookup(terms)
        limit = max(COMMON_MIN_DOCS, COMMON_SHARE * total)
        kept = [t for t in terms if docs.get(t, 0) <= limit]
        return kept or terms

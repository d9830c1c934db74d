"""The KNN index of memory vectors: a ``sqlite-vec`` ``vec0`` table (part of the ``embeddings`` extra).

``sqlite-vec`` is a loadable SQLite extension. CPython's ``sqlite3`` may be built without
``enable_load_extension`` (it is here), so the index is opened with ``apsw``, which ships its own
SQLite and loads extensions. It lives in a file of its own next to the database
(``librefang.memory-vectors.db``), never in the database file itself: two different SQLite
libraries in one process must not open the same file, because closing a descriptor in one drops the
POSIX locks the other holds (SQLite's "how to corrupt" §2.2.1).

The vectors' source of truth stays ``memory_vectors`` in the main database (written in the same
transaction style as every other row); this index is derived data. At startup it is compared with
that table (count and sum of row ids of the current model) and rebuilt from it when they differ,
so a crash between the two writes, or a model change, heals itself. Each row carries its agent id
as the ``vec0`` partition key: a per-agent query (the recall before every turn) reads only that
agent's vectors.

Every call blocks; the service runs them in worker threads, one at a time (a lock).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("librefang.memory.vectors")

MAX_DIMENSIONS = 8192
# Vectors per storage chunk; each agent (partition) fills chunks of its own. The default (1024) leaves
# most slots of an agent's chunk empty (a global query scans them all) and makes every insert rewrite
# a 1 MB blob. Measured at 100,000 vectors / 100 agents: insert ≈ 11,000/s of CPU instead of ≈ 2,000,
# per-agent query 1.3 ms, global 91 ms.
CHUNK_SIZE = 128


def available() -> bool:
    """True when ``sqlite-vec`` and ``apsw`` are installed (the ``embeddings`` extra)."""
    return importlib.util.find_spec("sqlite_vec") is not None and importlib.util.find_spec("apsw") is not None


def loadable_path() -> str:
    """``sqlite_vec.loadable_path()`` without importing ``sqlite_vec``: its ``__init__`` imports numpy
    when numpy is installed (about 10 MiB and a fifth of a second at every daemon start)."""
    spec = importlib.util.find_spec("sqlite_vec")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the memory plugin's vector index needs the 'sqlite-vec' package")
    return str(Path(next(iter(spec.submodule_search_locations))) / "vec0")


def index_path(database: Path) -> Path:
    """The index file beside a SQLite database file."""
    return database.with_name(database.stem + ".memory-vectors.db")


class VectorIndex:
    """One ``vec0`` table of float32 vectors (cosine distance), keyed by the item's ``seq``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model: str | None = None
        self.dimensions: int | None = None
        self._conn: Any = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Open the file, load the extension, read which model and size the table holds (blocking)."""
        import apsw

        conn = apsw.Connection(str(self.path))
        try:
            conn.enable_load_extension(True)
            conn.load_extension(loadable_path())
        finally:
            conn.enable_load_extension(False)  # nothing else may load code into it
        conn.setbusytimeout(5000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # derived data: rebuilt from the database if lost
        conn.execute("CREATE TABLE IF NOT EXISTS vec_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        meta = dict(conn.execute("SELECT name, value FROM vec_meta"))
        self._conn = conn
        if "model" in meta and "dimensions" in meta:
            self.model, self.dimensions = meta["model"], int(meta["dimensions"])

    def close(self) -> None:
        """Close the file (at plugin shutdown)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    # -- shape --------------------------------------------------------------------------------
    def _create(self, model: str, dimensions: int) -> None:
        if not 0 < dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"vector size {dimensions} is out of range")
        conn = self._conn
        with conn:
            conn.execute("DROP TABLE IF EXISTS vec_items")
            conn.execute(
                "CREATE VIRTUAL TABLE vec_items USING vec0(seq INTEGER PRIMARY KEY, "
                f"agent_id TEXT PARTITION KEY, embedding float[{int(dimensions)}] distance_metric=cosine, "
                f"chunk_size={CHUNK_SIZE})")
            conn.execute("DELETE FROM vec_meta")
            conn.executemany("INSERT INTO vec_meta (name, value) VALUES (?, ?)",
                             [("model", model), ("dimensions", str(dimensions))])
        self.model, self.dimensions = model, dimensions

    def summary(self) -> tuple[int, int]:
        """(rows, sum of seqs) of the index (blocking)."""
        with self._lock:
            if self.model is None:
                return 0, 0
            row = next(iter(self._conn.execute("SELECT count(*), coalesce(sum(seq), 0) FROM vec_items")))
            return int(row[0]), int(row[1])

    def rebuild(self, model: str, dimensions: int, rows: Iterable[tuple[int, str, bytes]]) -> int:
        """Replace the whole index with ``rows`` (seq, agent_id, float32 bytes) of ``model``."""
        with self._lock:
            self._create(model, dimensions)
            return self._insert(rows)

    # -- writing -------------------------------------------------------------------------------
    def upsert(self, model: str, rows: list[tuple[int, str, bytes]]) -> int:
        """Add or replace vectors of ``model``. A new model (or size) starts a new index: the old
        vectors were made by another model and are not comparable."""
        if not rows:
            return 0
        dimensions = len(rows[0][2]) // 4
        with self._lock:
            if self.model != model or self.dimensions != dimensions:
                self._create(model, dimensions)
            with self._conn:
                self._conn.executemany("DELETE FROM vec_items WHERE seq = ?", [(r[0],) for r in rows])
            return self._insert(rows)

    def _insert(self, rows: Iterable[tuple[int, str, bytes]]) -> int:
        size = 4 * (self.dimensions or 0)
        fitting = [row for row in rows if len(row[2]) == size]  # another size: not of this model
        with self._conn:
            self._conn.executemany("INSERT INTO vec_items (seq, agent_id, embedding) VALUES (?, ?, ?)", fitting)
        return len(fitting)

    def remove(self, seqs: list[int]) -> None:
        """Drop the vectors of purged items."""
        if not seqs:
            return
        with self._lock:
            if self.model is None:
                return
            with self._conn:
                self._conn.executemany("DELETE FROM vec_items WHERE seq = ?", [(s,) for s in seqs])

    # -- reading -------------------------------------------------------------------------------
    def search(self, model: str, query: bytes, limit: int, agent_id: str | None = None) -> list[tuple[int, float]]:
        """(seq, cosine similarity) of the ``limit`` nearest vectors, best first; empty when the
        index holds another model's vectors or none."""
        with self._lock:
            if self.model != model or self.dimensions != len(query) // 4 or limit <= 0:
                return []
            if agent_id is None:
                cursor = self._conn.execute(
                    "SELECT seq, distance FROM vec_items WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                    (query, limit))
            else:
                cursor = self._conn.execute(
                    "SELECT seq, distance FROM vec_items WHERE embedding MATCH ? AND k = ? AND agent_id = ? "
                    "ORDER BY distance", (query, limit, agent_id))
            return [(int(seq), 1.0 - float(distance)) for seq, distance in cursor]

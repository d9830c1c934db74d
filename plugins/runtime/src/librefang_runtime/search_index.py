"""The SQLite full-text index of message text, brought up to date off the turn's critical path.

A turn's commit no longer indexes its messages (the FTS5 insert was about half of that transaction,
and the reply waits for it). Migration 0005 keeps this invariant, which every function here relies on:
the index holds exactly the messages whose id is at most ``runtime_search_state.indexed_to``.

- :func:`index_pending` indexes every message above the mark and moves the mark to the newest id, in
  one transaction: a crash between a turn's commit and this step only leaves messages above the mark,
  indexed by the next step.
- Its triggers index an insert at or below the mark at once (a reused id, a compaction summary) and
  remove a deleted message at or below it from the index (history clear, trim, session delete,
  compaction); one above the mark was never indexed and is left alone.
- :class:`SearchIndexer` runs the step a little after turns commit, in batches (one FTS5 transaction
  for many messages costs a fraction of one per turn), and search calls :meth:`SearchIndexer.catch_up`
  first, so it sees every message committed before it.

Other databases have no index (search matches with LIKE): everything here is then a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("librefang.runtime.search")

_MARK = sa.text("SELECT indexed_to FROM runtime_search_state WHERE id = 1")
_NEWEST = sa.text("SELECT max(id) FROM runtime_messages")
_UPPER = sa.text("SELECT id FROM runtime_messages WHERE id > :mark ORDER BY id LIMIT 1 OFFSET :skip")
_INDEX = sa.text("INSERT INTO runtime_messages_fts(rowid, text) "
                 "SELECT id, text FROM runtime_messages WHERE id > :mark AND id <= :upper")
_MOVE = sa.text("UPDATE runtime_search_state SET indexed_to = :upper WHERE id = 1")
_REBUILD = sa.text("INSERT INTO runtime_messages_fts(runtime_messages_fts) VALUES ('rebuild')")
_RESET = sa.text("INSERT INTO runtime_search_state (id, indexed_to) VALUES (1, :upper)")


def index_pending(conn: Any, limit: int | None = None) -> tuple[int, bool]:
    """Index the messages above the mark (at most ``limit`` of them, the oldest first) and move the
    mark; returns (how many were indexed, whether more are pending). ``conn`` is a sync SQLAlchemy
    connection inside a transaction on SQLite."""
    mark = conn.execute(_MARK).scalar()
    newest = conn.execute(_NEWEST).scalar() or 0
    if mark is None:  # the state row is gone: nobody knows what the index holds, so rebuild it whole
        conn.execute(_REBUILD)
        conn.execute(_RESET, {"upper": newest})
        return 0, False
    if newest <= mark:
        return 0, False
    upper, more = newest, False
    if limit is not None:
        bound = conn.execute(_UPPER, {"mark": mark, "skip": limit - 1}).scalar()
        if bound is not None and bound < newest:
            upper, more = bound, True
    indexed = conn.execute(_INDEX, {"mark": mark, "upper": upper}).rowcount
    conn.execute(_MOVE, {"upper": upper})
    return indexed, more


class SearchIndexer:
    """Runs :func:`index_pending` through ``Database.run`` a little after messages are committed.

    :meth:`written` (on the event loop, after a commit) arms one timer; when it fires, one task indexes
    what is pending in transactions of at most ``batch`` messages (a large backlog is several short
    transactions, so turns' commits queued behind it wait little). Nothing here is needed for
    correctness (search catches up first, and the mark is in the database): it only keeps the
    backlog, and with it the first search's catch-up, small."""

    def __init__(self, db: Any, delay: float = 0.5, batch: int = 256) -> None:
        self.db = db
        self.enabled = bool(db.is_sqlite)
        self.delay = delay
        self.batch = batch
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = False  # messages committed since the running step read the newest id
        self._closed = False

    def written(self, count: int) -> None:
        """Note that ``count`` messages were just committed (call on the event loop)."""
        if not self.enabled or count <= 0 or self._closed:
            return
        if self._task is not None:  # a step is running: it arms the timer again when it ends
            self._dirty = True
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if not self._closed and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            more = True
            while more and not self._closed:
                _, more = await self.db.run(index_pending, self.batch)
        except Exception:  # the database is closing or failing: the mark says what is left to do
            log.warning("bringing the search index up to date failed; search will catch up", exc_info=True)
        finally:
            self._task = None
        if self._dirty and not self._closed:
            self._dirty = False
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    async def catch_up(self) -> None:
        """Index every message committed so far (search calls this first)."""
        if self.enabled:
            await self.db.run(index_pending)

    async def aclose(self) -> None:
        """Stop arming steps and wait for the one running (plugin shutdown); what is pending stays
        pending in the database and is indexed after the restart."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

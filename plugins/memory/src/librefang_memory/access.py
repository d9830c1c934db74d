"""Access bookkeeping of searches, written in the background.

Every search that returns memories counts as an access (``accessed_at``, ``access_count``: they
drive decay). Writing that inside the search would turn every read into a write transaction, so
hits are gathered here (bounded) and flushed once a second, when many are pending, and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import sqlalchemy as sa

from librefang_memory.models import items

log = logging.getLogger("librefang.memory")

FLUSH_SECONDS = 1.0
MAX_PENDING = 10_000


class AccessRecorder:
    """Pending ``seq -> (hits, last access time)``, flushed by :meth:`run`."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.pending: dict[int, tuple[int, float]] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def record(self, seqs: list[int]) -> None:
        """Count one access of each memory in ``seqs`` (no I/O)."""
        now = time.time()
        for seq in seqs:
            hits, _ = self.pending.get(seq, (0, now))
            self.pending[seq] = (hits + 1, now)
        if len(self.pending) >= MAX_PENDING:
            self._wake.set()

    async def flush(self) -> int:
        """Write what is pending; returns how many memories were updated."""
        async with self._lock:
            batch, self.pending = self.pending, {}
            if not batch:
                return 0
            async with self.db.begin() as conn:
                await conn.execute(
                    items.update().where(items.c.seq == sa.bindparam("s"))
                    .values(accessed_at=sa.bindparam("t"), access_count=items.c.access_count + sa.bindparam("n")),
                    [{"s": seq, "n": hits, "t": at} for seq, (hits, at) in batch.items()])
            return len(batch)

    async def run(self) -> None:
        """Flush every ``FLUSH_SECONDS`` (sooner when many are pending) until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop; retried next round
                log.warning("could not record memory accesses: %s: %s", type(exc).__name__, exc)

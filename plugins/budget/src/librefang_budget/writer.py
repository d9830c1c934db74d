"""Group commit of usage rows: the rows of LLM calls metered while a transaction is in flight are
committed together in the next one, so concurrent turns share one transaction (and one hop to the
database thread) instead of queueing one by one behind SQLite's single writer.

A caller returns once its row is committed, as with one transaction per row. The flush runs in its
own task: a caller that is cancelled neither strands the rows of the others nor loses its own (a
row handed over is always written, as the shielded write before). A batch that fails is retried row
by row, so one bad row fails only its own call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Rows = list[dict[str, Any]]


class UsageWriter:
    """Rows waiting for the next commit, and the task committing them."""

    def __init__(self, commit: Callable[[Rows], Awaitable[None]]) -> None:
        self._commit = commit  # one transaction for the rows given
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Future[None] | None = None
        self.transactions = 0  # how many commits were attempted (each a batch or, after a failure, a row)

    async def add(self, row: dict[str, Any]) -> None:
        """Write ``row``; returns once it is committed (raises what its write raised)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
            self._flusher.add_done_callback(self._flushed)
        await done  # (a cancelled caller cancels only this future: the flush still writes the row)

    async def drain(self) -> None:
        """Wait until every row handed over is written (plugin shutdown)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})  # (does not raise what the flush raised)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write(batch)
            except BaseException:  # the flush itself is cancelled (loop shutdown): nobody waits forever
                self._cancel(batch)
                raise

    def _flushed(self, task: asyncio.Future[None]) -> None:
        # Cancelled (also before it ran a line: then the except above never ran) and no newer flush
        # took over the rows still waiting: their callers are told instead of waiting forever.
        if task.cancelled() and task is self._flusher:
            self._cancel([])

    def _cancel(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        for _, done in batch + self._pending:
            if not done.done():
                done.cancel()
        self._pending = []

    async def _write(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            self.transactions += 1
            await self._commit([row for row, _ in batch])
        except Exception:  # noqa: BLE001 - one bad row must not fail the others: one by one
            for row, done in batch:
                try:
                    self.transactions += 1
                    await self._commit([row])
                except Exception as exc:  # noqa: BLE001 - handed to that row's caller
                    if not done.done():
                        done.set_exception(exc)
                else:
                    if not done.done():
                        done.set_result(None)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

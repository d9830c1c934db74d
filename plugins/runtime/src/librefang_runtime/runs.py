"""Runs: one at a time per session (:class:`SessionLocks`), and a running turn that
:meth:`~librefang_runtime.service.RuntimeService.stop` can cancel (:class:`Run`)."""

from __future__ import annotations

import asyncio
from typing import Any


class Run:
    """A running turn: the task that runs it and the cancellations :meth:`RuntimeService.stop` sent it."""

    __slots__ = ("task", "stops", "looping", "ended")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.stops = 0  # cancellations sent by stop() and not yet taken back (Task.uncancel)
        self.looping = True  # the loop still runs (afterwards the task only stores what it did)
        self.ended: asyncio.Future[None] | None = None  # made by the first stop(), resolved when the run ends

    def stop(self) -> asyncio.Future[None]:
        """Cancel the loop (unless it has ended); the future resolves when the run has ended."""
        if self.ended is None:
            self.ended = self.task.get_loop().create_future()
        if self.looping:
            self.stops += 1
            self.task.cancel()
        return self.ended

    def loop_ended(self) -> None:
        """The loop has ended: stop() no longer cancels, and its cancellations are taken back
        (``Task.uncancel``; the caller goes on, to answer 409); the caller's own cancellation stays."""
        self.looping = False
        for _ in range(self.stops):
            self.task.uncancel()
        self.stops = 0


class SessionLocks:
    """One :class:`asyncio.Lock` per busy session. asyncio locks wake waiters in FIFO order, so
    messages to one session run in the order they arrived; a lock nobody holds or waits for is dropped
    (the table stays as small as the number of busy sessions)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, session_id: str) -> bool:
        entry = self._locks.get(session_id)
        return entry is not None and entry[0].locked()

    def __len__(self) -> int:
        return len(self._locks)

    def hold(self, session_id: str) -> _Held:
        """``async with locks.hold(session_id):`` runs the block while holding the session's lock
        (waiting in line for it)."""
        return _Held(self._locks, session_id)


class _Held:
    """The context manager of :meth:`SessionLocks.hold` (a class: cheaper than a generator-based one
    on a path every turn takes)."""

    __slots__ = ("locks", "session_id", "lock")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], session_id: str) -> None:
        self.locks = locks
        self.session_id = session_id
        self.lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        locks, session_id = self.locks, self.session_id
        lock, users = locks.get(session_id) or (asyncio.Lock(), 0)
        locks[session_id] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise
        self.lock = lock

    async def __aexit__(self, *exc: object) -> None:
        assert self.lock is not None
        self.lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self.locks[self.session_id]
        if users <= 1:
            del self.locks[self.session_id]
        else:
            self.locks[self.session_id] = (lock, users - 1)

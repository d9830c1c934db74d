"""Background tasks owned by a plugin, cancelled when that plugin stops or reloads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("librefang.tasks")


class TaskRegistry:
    """Tracks tasks by owner so a plugin's work ends with the plugin."""

    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}

    def spawn(self, owner: str, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start ``coro`` as a task owned by ``owner`` (a plugin name, or ``core``).

        The host cancels it when ``owner`` shuts down or reloads; an exception it raises is logged.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name or f"{owner}:task")
        bucket = self._tasks.setdefault(owner, set())
        bucket.add(task)
        task.add_done_callback(lambda t: self._done(owner, t))
        return task

    def _done(self, owner: str, task: asyncio.Task[Any]) -> None:
        self._tasks.get(owner, set()).discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s of %s failed", task.get_name(), owner, exc_info=task.exception())

    def count(self, owner: str | None = None) -> int:
        """Running tasks of ``owner`` (of everyone without it)."""
        if owner is not None:
            return len(self._tasks.get(owner, ()))
        return sum(len(v) for v in self._tasks.values())

    async def cancel_owner(self, owner: str, grace: float = 5.0) -> None:
        """Cancel every task of ``owner`` and wait at most ``grace`` seconds for them to finish
        (a task that ignores cancellation cannot hold shutdown hostage)."""
        tasks = list(self._tasks.pop(owner, set()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def cancel_all(self, grace: float = 5.0) -> None:
        """Cancel the tasks of every owner."""
        for owner in list(self._tasks):
            await self.cancel_owner(owner, grace)

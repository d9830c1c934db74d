"""Which agents have live memories at all, so recall and extraction skip their searches for an agent
that has none (most agents, most turns: a full-text query and a worker-thread hop saved per turn).

Kept by :class:`~librefang_memory.store.ItemStore`, which every write goes through: an insert marks
its agents as having memories (after it commits, so a check that ran meanwhile cannot record the
agent as empty), a soft delete or purge forgets what was known of its agents (the next turn asks the
database again). An agent not known either way is looked up once (an indexed ``LIMIT 1`` query).

Only where this process sees every write: SQLite, whose database one daemon owns (the home's lock).
On PostgreSQL several daemons may write the same table, so nothing is cached there. A "no memories"
answer is also trusted for ``EMPTY_TTL`` seconds only: a write this instance does not see (a request
still finishing on the previous instance of the plugin after a development reload) shows up then.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

EMPTY_TTL = 60.0
MAX_AGENTS = 10_000


class AgentPresence:
    """``agent id -> (has live memories, when that was learned)``, bounded."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._known: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        # Bumped by every insert: a lookup that overlapped one does not record its "empty" answer.
        self.generation = 0

    def known(self, agent_id: str) -> bool | None:
        """True: the agent has live memories; False: it has none; None: not known (ask the database)."""
        if not self.enabled:
            return None
        entry = self._known.get(agent_id)
        if entry is None:
            return None
        has, learned = entry
        if not has and time.monotonic() - learned > EMPTY_TTL:
            del self._known[agent_id]
            return None
        return has

    def learned(self, agent_id: str, has: bool, generation: int) -> None:
        """Record a lookup's answer; ``generation`` is :attr:`generation` from before the lookup."""
        if not self.enabled or (not has and generation != self.generation):
            return
        self._set(agent_id, has)

    def inserted(self, agent_ids: Iterable[str]) -> None:
        """Items of these agents were (or may have been) committed."""
        self.generation += 1
        if self.enabled:
            for agent_id in agent_ids:
                self._set(agent_id, True)

    def removed(self, agent_ids: Iterable[str]) -> None:
        """Items of these agents were deleted: whether any is left is asked again."""
        for agent_id in agent_ids:
            self._known.pop(agent_id, None)

    def clear(self) -> None:
        """Forget everything (a write whose agents are not known)."""
        self.generation += 1
        self._known.clear()

    def _set(self, agent_id: str, has: bool) -> None:
        self._known[agent_id] = (has, time.monotonic())
        self._known.move_to_end(agent_id)
        while len(self._known) > MAX_AGENTS:
            self._known.popitem(last=False)

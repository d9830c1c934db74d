"""Agent ids known to exist, so a memory request does not cost a registry query each time.

Bounded and short-lived (``TTL`` seconds); an ``agent.killed`` event on the bus removes the agent at
once, so a killed agent's memory routes answer 404 straight away.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

TTL = 30.0
MAX_ENTRIES = 10_000


class KnownAgents:
    """``agent id -> time it was confirmed``."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, agent_id: str) -> bool:
        confirmed = self._seen.get(agent_id)
        if confirmed is None:
            return False
        if time.monotonic() - confirmed > TTL:
            del self._seen[agent_id]
            return False
        return True

    def add(self, agent_id: str) -> None:
        self._seen[agent_id] = time.monotonic()
        self._seen.move_to_end(agent_id)
        while len(self._seen) > MAX_ENTRIES:
            self._seen.popitem(last=False)

    def forget(self, agent_id: str) -> None:
        self._seen.pop(agent_id, None)

    async def follow(self, bus: Any) -> None:
        """Forget killed agents as the agents plugin announces them (runs until cancelled)."""
        with bus.subscribe("agent.killed", name="memory:known-agents") as events:
            async for event in events:
                agent_id = (event.data or {}).get("agent_id")
                if agent_id:
                    self.forget(agent_id)

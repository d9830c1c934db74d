"""The proactive pipeline around an agent turn: recall before it, extraction after it.

``auto_retrieve``: the memories that best match the user's message go into the system prompt as a
"Personal context" section. ``auto_memorize``: facts stated in the user's message are extracted by
rules and compared with what the agent already remembers: a near-duplicate is left alone (no-op),
a similar fact replaces the old one (update, kept in the history), anything else is added.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from librefang_memory.config import ProactiveMemoryConfig, for_agent
from librefang_memory.extract import Fact, extract, jaccard, tokens
from librefang_memory.service import MemoryService

log = logging.getLogger("librefang.memory")

MAX_PENDING = 1000
CONTEXT_HEADER = "## Personal context\nWhat you remember from earlier conversations (use it when relevant):"


@dataclass
class Decision:
    """What the pipeline did with one fact: ``add``, ``update`` or ``noop``, and the memory id."""

    action: str
    fact: Fact
    memory_id: str


class Pipeline:
    """Recall and extraction for one kernel's memory service."""

    def __init__(self, service: MemoryService) -> None:
        self.service = service
        self.pending: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def config_for(self, agent_id: str) -> ProactiveMemoryConfig:
        """The global ``[proactive_memory]`` with the agent manifest's overrides."""
        override = None
        try:
            from librefang_agents.api import registry

            record = await registry(self.service.kernel).get(agent_id)
            override = record.parsed().proactive_memory
        except Exception:  # noqa: BLE001 - an agent we cannot read gets the global settings
            override = None
        return for_agent(self.service.proactive, override)

    def remember_message(self, agent_id: str, session_id: str, message: str) -> None:
        """Keep the user's message of a running turn until ``after_turn`` (bounded)."""
        key = (agent_id, session_id)
        self.pending[key] = message
        self.pending.move_to_end(key)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)

    async def recall(self, agent_id: str, session_id: str, message: str) -> str | None:
        """The "Personal context" prompt section for this turn, or None."""
        config = await self.config_for(agent_id)
        if not config.enabled:
            return None
        if config.auto_memorize:
            self.remember_message(agent_id, session_id, message)
        if not config.auto_retrieve or config.max_retrieve == 0:
            return None
        found, _ = await self.service.search(message, agent_id=agent_id, limit=config.max_retrieve)
        if not found:
            return None
        lines, size = [CONTEXT_HEADER], len(CONTEXT_HEADER)
        for item in found:
            line = f"- {item.content}"
            if size + len(line) + 1 > config.format_context_max_chars:
                break
            lines.append(line)
            size += len(line) + 1
        return "\n".join(lines) if len(lines) > 1 else None

    async def after_turn(self, turn: dict[str, Any]) -> list[Decision]:
        """Extract memories from the turn's user message (when the turn succeeded)."""
        agent_id, session_id = turn.get("agent_id"), turn.get("session_id")
        message = self.pending.pop((agent_id, session_id), None)
        if not message or not agent_id or turn.get("outcome", "ok") != "ok":
            return []
        config = await self.config_for(agent_id)
        if not (config.enabled and config.auto_memorize):
            return []
        return await self.memorize(agent_id, message, config=config)

    async def memorize(self, agent_id: str, text: str, *, config: ProactiveMemoryConfig | None = None,
                       level: str = "user", peer_id: str | None = None, source: str = "extraction") -> list[Decision]:
        """Extract facts from ``text`` and add / update / no-op each against the agent's memories."""
        config = config or self.service.proactive
        facts = extract(text, config.extract_categories, config.extraction_threshold)
        decisions = []
        for fact in facts:
            decisions.append(await self._decide(agent_id, fact, config, level, peer_id, source))
        return decisions

    async def _decide(self, agent_id: str, fact: Fact, config: ProactiveMemoryConfig, level: str,
                      peer_id: str | None, source: str) -> Decision:
        candidates = await self.service.store.search(fact.content, agent_id=agent_id, level=None, limit=5)
        words = tokens(fact.content)
        best, best_score = None, 0.0
        for item in candidates:
            score = jaccard(words, tokens(item.content))
            if score > best_score:
                best, best_score = item, score
        if best is not None:
            if best_score >= config.duplicate_threshold:
                self.service.access.record([best.seq])
                return Decision("noop", fact, best.id)
            limit = (config.update_threshold_same_category if best.category == fact.category
                     else config.update_threshold_cross_category)
            if best_score >= limit:
                updated = await self.service.update(best.id, {
                    "content": fact.content, "category": fact.category,
                    "confidence": max(fact.confidence, best.confidence)})
                return Decision("update", fact, updated.id)
        added = await self.service.add_many(agent_id, [{
            "content": fact.content, "category": fact.category, "confidence": fact.confidence, "level": level,
            "metadata": {"extractor": "rules"}}], source=source, peer_id=peer_id)
        return Decision("add", fact, added[0].id)

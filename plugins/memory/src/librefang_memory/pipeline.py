"""The proactive pipeline around an agent turn: recall before it, extraction after it.

``auto_retrieve``: the memories that best match the user's message go into the system prompt as a
"Personal context" section (also for an incognito turn: reading is fine). ``auto_memorize``: after a
successful turn that is stored (never an incognito or ephemeral one), facts are extracted from the
user's message, by the configured model when ``extraction_model`` is set (it also decides add /
update / no-op against the closest stored memories; any failure falls back to the rules), by rules
otherwise. A fact that is a near-duplicate of a stored memory is left alone (no-op), a similar one
replaces it (update, kept in the history), anything else is added.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from librefang_memory import llm_extract
from librefang_memory.config import ProactiveMemoryConfig, for_agent
from librefang_memory.extract import Fact, extract, jaccard, tokens
from librefang_memory.service import MemoryService

log = logging.getLogger("librefang.memory")

# An agent's [proactive_memory] overrides are read from its manifest at most this often (twice per
# turn otherwise: recall and extraction); an agent.* event of that agent drops them at once, the TTL
# covers another daemon changing the manifest in a shared database.
OVERRIDE_TTL = 2.0
MAX_CACHED_AGENTS = 10_000
BUILTIN = "builtin:"  # the manifest module of agents the LLM loop answers
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
        # agent id -> (expiry, manifest [proactive_memory] overrides, answered by the LLM loop)
        self._overrides: dict[str, tuple[float, dict[str, Any] | None, bool]] = {}
        # The bus puts events into this queue synchronously: draining it before each use sees every
        # change published so far.
        self._agent_events = service.kernel.bus.subscribe("agent.*", maxsize=1000, name="memory:agent-config")
        self._agent_events_dropped = 0

    def close(self) -> None:
        """Stop listening to agent events (plugin shutdown)."""
        self._agent_events.close()

    def _drain_agent_events(self) -> None:
        events = self._agent_events
        if events.dropped != self._agent_events_dropped:  # events were lost: forget every agent
            self._agent_events_dropped = events.dropped
            self._overrides.clear()
        while not events.queue.empty():
            event = events.queue.get_nowait()
            if event.topic != "agent.state_changed":  # a state change leaves the manifest as it is
                self._overrides.pop(str(event.data.get("agent_id") or ""), None)

    async def config_for(self, agent_id: str) -> ProactiveMemoryConfig:
        """The global ``[proactive_memory]`` with the agent manifest's overrides."""
        return (await self._agent(agent_id))[0]

    async def _agent(self, agent_id: str) -> tuple[ProactiveMemoryConfig, bool]:
        """(:meth:`config_for`, whether the LLM loop answers the agent: a ``wasm:`` or other module
        agent never reads a system prompt, so it gets no recalled context)."""
        self._drain_agent_events()
        now = time.monotonic()
        cached = self._overrides.get(agent_id)
        if cached is not None and cached[0] > now:
            return for_agent(self.service.proactive, cached[1]), cached[2]
        override, llm = None, True
        try:
            from librefang_agents.api import registry

            manifest = (await registry(self.service.kernel).get(agent_id)).parsed()
            override = manifest.proactive_memory
            llm = str(getattr(manifest, "module", BUILTIN) or BUILTIN).startswith(BUILTIN)
        except Exception:  # noqa: BLE001 - an agent we cannot read gets the global settings
            override, llm = None, True
        if len(self._overrides) >= MAX_CACHED_AGENTS:
            self._overrides.clear()
        self._overrides[agent_id] = (now + OVERRIDE_TTL, override, llm)
        return for_agent(self.service.proactive, override), llm

    async def recall(self, agent_id: str, message: str, *, incognito: bool = False) -> str | None:
        """The "Personal context" prompt section for this turn, or None. An incognito turn reads
        without leaving a trace (the recalled memories' access counts are not touched)."""
        config, llm = await self._agent(agent_id)
        if not config.enabled:
            return None
        if not config.auto_retrieve or config.max_retrieve == 0 or not llm:
            return None
        if not await self.service.store.may_have_items(agent_id):  # nothing to find: no search
            return None
        found, _ = await self.service.search(message, agent_id=agent_id, limit=config.max_retrieve,
                                             touch=not incognito)
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
        """Extract memories from the turn's user message (a successful turn that is stored)."""
        agent_id, message = turn.get("agent_id"), turn.get("message")
        if not agent_id or not isinstance(message, str) or not message.strip():
            return []
        if turn.get("incognito") or turn.get("outcome", "ok") != "ok":
            return []
        config = await self.config_for(agent_id)
        if not (config.enabled and config.auto_memorize):
            return []
        return await self.memorize(agent_id, message, config=config, session_id=turn.get("session_id"))

    async def memorize(self, agent_id: str, text: str, *, config: ProactiveMemoryConfig | None = None,
                       level: str = "user", peer_id: str | None = None, source: str = "extraction",
                       session_id: str | None = None) -> list[Decision]:
        """Extract facts from ``text`` and add / update / no-op each against the agent's memories."""
        config = config or self.service.proactive
        if config.extraction_model:
            decisions = await self._memorize_with_model(agent_id, text, config, level, peer_id, source, session_id)
            if decisions is not None:
                return decisions
        facts = extract(text, config.extract_categories, config.extraction_threshold)
        decisions = []
        for fact in facts:
            decisions.append(await self._decide(agent_id, fact, config, level, peer_id, source))
        return decisions

    def extraction_provider(self, config: ProactiveMemoryConfig) -> str | None:
        """``extraction_provider``, else the ``[default_model]`` provider."""
        if config.extraction_provider:
            return config.extraction_provider
        try:
            from librefang_agents.api import registry

            provider = registry(self.service.kernel).default_model().get("provider")
        except Exception:  # noqa: BLE001 - no agents plugin: no default provider
            return None
        return provider if provider not in (None, "", "default", "auto") else None

    async def _memorize_with_model(self, agent_id: str, text: str, config: ProactiveMemoryConfig, level: str,
                                   peer_id: str | None, source: str, session_id: str | None) -> list[Decision] | None:
        """The model's decisions applied, or None when the model could not be used (rules then)."""
        provider = self.extraction_provider(config)
        if provider is None:
            log.warning("extraction_model is set but no provider is known: rule-based extraction")
            return None
        candidates: list[Any] = []
        if await self.service.store.may_have_items(agent_id):
            candidates, _ = await self.service.search(text, agent_id=agent_id, limit=llm_extract.MAX_CANDIDATES,
                                                      touch=False)
        try:
            proposals = await llm_extract.propose(
                self.service.kernel, provider=provider, model=config.extraction_model or "", agent_id=agent_id,
                session_id=session_id, message=text, candidates=candidates, categories=config.extract_categories,
                time_budget=config.extraction_timeout_secs)
        except llm_extract.ExtractionFailed as exc:
            log.warning("LLM extraction with %s/%s failed (%s): rule-based extraction", provider,
                        config.extraction_model, exc)
            return None
        decisions = []
        for proposal in proposals:
            if proposal.fact.confidence < config.extraction_threshold:
                continue
            target = candidates[proposal.target] if proposal.target is not None else None
            if proposal.action == "noop" and target is not None:
                self.service.access.record([target.seq])
                decisions.append(Decision("noop", proposal.fact, target.id))
            elif proposal.action == "update" and target is not None:
                updated = await self.service.update(target.id, {
                    "content": proposal.fact.content, "category": proposal.fact.category,
                    "confidence": max(proposal.fact.confidence, target.confidence)})
                decisions.append(Decision("update", proposal.fact, updated.id))
            else:  # "add", still checked against near-duplicates the model may have missed
                decisions.append(await self._decide(agent_id, proposal.fact, config, level, peer_id, source,
                                                    extractor="llm"))
        return decisions

    async def _decide(self, agent_id: str, fact: Fact, config: ProactiveMemoryConfig, level: str,
                      peer_id: str | None, source: str, extractor: str = "rules") -> Decision:
        candidates = []
        if await self.service.store.may_have_items(agent_id):
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
            "metadata": {"extractor": extractor}}], source=source, peer_id=peer_id)
        return Decision("add", fact, added[0].id)

"""LLM extraction (``[proactive_memory] extraction_model``): the configured model reads the user's
message and the agent's closest existing memories, and answers in JSON which facts to add, which
memory to update and which are already known.

The model is called through the providers plugin (keys, retries, fallbacks), between the runtime's
``before_llm_call`` and ``after_llm_call`` hooks, so budgets refuse and meter it like any other call.
Any failure (refused, provider error, no JSON, a malformed answer) raises :class:`ExtractionFailed`
and the pipeline falls back to the rule-based extractor.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from librefang_memory.extract import MAX_FACT_CHARS, Fact

MAX_CANDIDATES = 10
MAX_FACTS = 20
MAX_MESSAGE_CHARS = 8000
MAX_ANSWER_TOKENS = 1024
ACTIONS = ("add", "update", "noop")

SYSTEM = """You extract long-term memories about the user from one message they sent to an assistant.
Keep only durable facts worth remembering in later conversations: identity, preferences, expertise,
work, projects, communication wishes, frustrations. Ignore questions, small talk and one-off requests.
Write each fact as one short third-person sentence ("The user prefers tea").

You also get the memories already stored that are closest to the message, numbered M1, M2, ...
For each fact decide:
- "add": it is new;
- "update": it changes or refines a stored memory (give that memory's number as "target");
- "noop": a stored memory already says it (give its number as "target").

Answer with one JSON object and nothing else:
{"memories": [{"content": "...", "category": "<one of: %s>", "confidence": 0.0-1.0,
"action": "add|update|noop", "target": "M1"}]}
An empty list when there is nothing to remember."""


class ExtractionFailed(Exception):
    """The model could not be used or its answer was unusable (the caller falls back to rules)."""


@dataclass(frozen=True)
class Proposal:
    """One fact the model proposes, with its decision (``target``: index into the candidates)."""

    fact: Fact
    action: str
    target: int | None


def build_prompt(message: str, candidates: list[Any]) -> str:
    """The user turn of the extraction call: the stored candidates, then the message."""
    stored = "\n".join(f"M{n}: [{c.category or 'uncategorized'}] {c.content}"
                       for n, c in enumerate(candidates[:MAX_CANDIDATES], start=1)) or "(none)"
    return f"Stored memories:\n{stored}\n\nUser message:\n{message[:MAX_MESSAGE_CHARS]}"


def parse(text: str, categories: list[str], candidates: int) -> list[Proposal]:
    """The proposals in the model's answer (a JSON object, possibly inside a code fence)."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match is None:
        raise ExtractionFailed("the answer holds no JSON object")
    try:
        data = json.loads(match.group(0))
    except ValueError:
        raise ExtractionFailed("the answer is not valid JSON") from None
    entries = data.get("memories") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ExtractionFailed('the answer has no "memories" list')
    proposals: list[Proposal] = []
    for entry in entries[:MAX_FACTS]:
        if not isinstance(entry, dict):
            raise ExtractionFailed("a memory is not an object")
        content = entry.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ExtractionFailed("a memory has no content")
        content = " ".join(content.split())[:MAX_FACT_CHARS]
        category = entry.get("category")
        if category not in categories:
            category = categories[0] if categories else None
        try:
            confidence = min(1.0, max(0.0, float(entry.get("confidence", 0.8))))
        except (TypeError, ValueError):
            raise ExtractionFailed("a confidence is not a number") from None
        action = entry.get("action", "add")
        if action not in ACTIONS:
            raise ExtractionFailed(f"unknown action {action!r}")
        target = _target(entry.get("target"), candidates)
        if action != "add" and target is None:
            action = "add"  # an update or no-op of nothing known is a new fact
        proposals.append(Proposal(Fact(content, category or "personal_detail", confidence), action, target))
    return proposals


def _target(value: Any, candidates: int) -> int | None:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*M?(\d+)\s*", value, re.IGNORECASE)
        value = int(match.group(1)) if match else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= candidates:
        return value - 1
    return None


async def propose(kernel: Any, *, provider: str, model: str, agent_id: str, session_id: str | None,
                  message: str, candidates: list[Any], categories: list[str],
                  time_budget: float) -> list[Proposal]:
    """Ask ``provider``/``model`` for the facts of ``message`` (raises :class:`ExtractionFailed`)."""
    from librefang_providers.api import CompletionRequest, LLMError, Message, ResponseFormat, get_registry

    candidates = candidates[:MAX_CANDIDATES]
    request = CompletionRequest(
        model=model, system=SYSTEM % ", ".join(categories), max_tokens=MAX_ANSWER_TOKENS, temperature=0.0,
        messages=[Message("user", build_prompt(message, candidates))], response_format=ResponseFormat("json"),
        timeout=time_budget)
    call = {"agent_id": agent_id, "agent_name": None, "session_id": session_id, "provider": provider,
            "model": model, "iteration": 0, "purpose": "memory_extraction"}
    try:
        await kernel.plugins.acall("before_llm_call", isolate=False, kernel=kernel, call=call)
    except Exception as exc:  # a budget refused it: no call is made
        raise ExtractionFailed(f"refused before the call: {type(exc).__name__}") from None
    started = time.perf_counter()
    try:
        response = await get_registry(kernel).complete(request, provider=provider, fallback_models=[])
    except LLMError as exc:
        raise ExtractionFailed(f"the model call failed: {exc.code}") from None
    await kernel.plugins.acall("after_llm_call", kernel=kernel, call={
        **call, "provider": response.provider, "model": response.model, "usage": response.usage,
        "latency_ms": (time.perf_counter() - started) * 1000, "tool_calls": 0})
    return parse(response.text, categories, len(candidates))

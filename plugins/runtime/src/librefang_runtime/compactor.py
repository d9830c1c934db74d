"""Session compaction: all but the most recent messages are replaced by an LLM-written summary.

Triggered before a turn when a session holds more than ``[compaction] threshold_messages`` messages,
or when its estimated tokens pass ``token_threshold_ratio`` of the model's context window (the
manifest's ``[model] context_window``), and on demand (``POST /api/agents/{id}/session/compact``).
Three stages, as the reference: one summary call; if the transcript is longer than
``max_chunk_chars``, a summary per chunk merged by a last call; if the LLM fails, a plain summary
built without it (``used_fallback``). The cut never separates a tool_use from its tool_result.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from librefang_providers.api import (
    CompletionRequest,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    collect,
)
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("librefang.runtime.compactor")

SUMMARY_PREFIX = "[Summary of the earlier conversation]"
SYSTEM = ("You summarise conversations between a user and an AI agent so the agent can continue without "
          "the full transcript. Keep facts, names, numbers, decisions, open tasks and what tools found. "
          "Write plain prose or short bullet points; no preamble.")
TOOL_CHARS = 300


class CompactionConfig(BaseModel):
    """``[compaction]`` of config.toml."""

    model_config = ConfigDict(extra="forbid")

    threshold_messages: int = Field(30, ge=0, le=100_000, description="Compact a session beyond this many messages (0 = never)")
    keep_recent: int = Field(10, ge=2, le=10_000, description="Messages kept verbatim after the summary")
    max_summary_tokens: int = Field(1024, ge=64, le=100_000, description="Output budget of the summary")
    token_threshold_ratio: float = Field(0.7, gt=0, le=1.0, description="Share of the context window that triggers it")
    max_chunk_chars: int = Field(80_000, ge=1000, le=10_000_000, description="Transcript size summarised per call")


@dataclass
class CompactionResult:
    summary: str
    kept_messages: int
    compacted_count: int
    chunks_used: int
    used_fallback: bool


def estimate_tokens(messages: list[Message]) -> int:
    """About four characters per token (CJK about 1.5 tokens per character)."""
    total = 0.0
    for message in messages:
        text = json.dumps([getattr(b, "text", "") or getattr(b, "content", "") or getattr(b, "input", "")
                           for b in message.blocks()], ensure_ascii=False, default=str)
        cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")
        total += (len(text) - cjk) / 4 + cjk * 1.5
    return int(total)


def split_point(messages: list[Message], keep_recent: int) -> int:
    """Index where the kept part starts: at most ``keep_recent`` messages, starting at a user turn
    that carries no tool results (so no pair is cut). 0 when there is nothing to compact."""
    start = max(0, len(messages) - keep_recent)
    while start < len(messages):
        message = messages[start]
        if message.role == "user" and not any(isinstance(b, ToolResultBlock) for b in message.blocks()):
            return start
        start += 1
    return len(messages)


def transcript(messages: list[Message]) -> str:
    """The messages as plain text for the summariser."""
    lines = []
    for message in messages:
        for block in message.blocks():
            if isinstance(block, TextBlock) and block.text.strip():
                lines.append(f"{message.role.upper()}: {block.text.strip()}")
            elif isinstance(block, ToolUseBlock):
                lines.append(f"TOOL CALL {block.name}: {json.dumps(block.input, ensure_ascii=False)[:TOOL_CHARS]}")
            elif isinstance(block, ToolResultBlock):
                lines.append(f"TOOL RESULT{' (error)' if block.is_error else ''}: {block.content[:TOOL_CHARS]}")
    return "\n".join(lines)


def fallback_summary(messages: list[Message]) -> str:
    """A summary made without the LLM: what the user asked, in order (bounded)."""
    asks = []
    for message in messages:
        if message.role != "user":
            continue
        text = " ".join(b.text for b in message.blocks() if isinstance(b, TextBlock)).strip()
        if text and not text.startswith(SUMMARY_PREFIX):
            asks.append("- " + " ".join(text.split())[:200])
    return (f"{len(messages)} earlier messages were removed. The user had asked:\n" + "\n".join(asks[-20:])
            if asks else f"{len(messages)} earlier messages were removed.")


async def _summarise(llm: Any, target: dict[str, Any], text: str, max_tokens: int) -> str:
    request = CompletionRequest(model=target["model"], system=SYSTEM, max_tokens=max_tokens,
                                messages=[Message("user", "Summarise this conversation:\n\n" + text)])
    # before_llm_call / after_llm_call as in the agent loop (budgets, metering); a refusal raises and
    # the caller falls back to the plain summary.
    kernel, call = target.get("kernel"), target.get("call")
    if kernel is not None and call is not None:
        await kernel.plugins.acall("before_llm_call", isolate=False, kernel=kernel, call=call)
    started = time.perf_counter()
    response = await collect(llm.stream(request, provider=target["provider"], base_url=target.get("base_url"),
                                        api_key_env=target.get("api_key_env")))
    if kernel is not None and call is not None:
        await kernel.plugins.acall("after_llm_call", kernel=kernel, call={
            **call, "provider": response.provider, "model": response.model, "usage": response.usage,
            "latency_ms": (time.perf_counter() - started) * 1000, "tool_calls": 0})
    summary = response.text.strip()
    if not summary:
        raise ValueError("the summary came back empty")
    return summary


async def summarise(llm: Any, target: dict[str, Any], older: list[Message],
                    config: CompactionConfig) -> tuple[str, int, bool]:
    """(summary, chunks used, used_fallback) of ``older``; ``target`` names ``provider``, ``model`` and
    optionally ``base_url``/``api_key_env``."""
    text = transcript(older)
    size = config.max_chunk_chars
    try:
        if len(text) <= size:
            return await _summarise(llm, target, text, config.max_summary_tokens), 1, False
        chunks = [text[i:i + size] for i in range(0, len(text), size)][:20]
        parts = [await _summarise(llm, target, chunk, config.max_summary_tokens) for chunk in chunks]
        merged = await _summarise(llm, target, "\n\n".join(f"Part {i + 1}:\n{p}" for i, p in enumerate(parts)),
                                  config.max_summary_tokens)
        return merged, len(chunks), False
    except Exception as exc:  # the LLM failing must not lose the session: fall back to a plain summary
        log.warning("compaction summary failed (%s: %s); using the plain summary", type(exc).__name__, exc)
        return fallback_summary(older), 0, True


def needs_compaction(messages: list[Message], config: CompactionConfig, context_window: int | None) -> bool:
    """Over the message threshold, or over the share of the context window."""
    if config.threshold_messages and len(messages) > config.threshold_messages:
        return True
    return bool(context_window) and estimate_tokens(messages) > context_window * config.token_threshold_ratio


async def compact(runtime: Any, session_id: str, provider: str, model: str, config: CompactionConfig,
                  base_url: str | None = None, api_key_env: str | None = None, *,
                  use_llm: bool = True) -> CompactionResult | None:
    """Compact one session now (the caller holds its lock). None when there is nothing to compact.

    ``use_llm=False`` writes the plain summary without calling a model: the session of an agent
    answered by a module (``wasm:…``) has no model to ask."""
    stored = [s.message for s in await runtime.store.load(session_id)]
    cut = split_point(stored, config.keep_recent)
    if cut == 0 or cut >= len(stored):
        return None
    older, kept = stored[:cut], stored[cut:]
    if not use_llm:
        summary = fallback_summary(older)
        await runtime.store.compact_prefix(session_id, cut, Message("user", f"{SUMMARY_PREFIX}\n{summary}"), summary)
        return CompactionResult(summary, len(kept), len(older), 0, True)
    from librefang_providers.api import get_registry

    target = {"provider": provider, "model": model, "base_url": base_url, "api_key_env": api_key_env}
    info = await runtime.store.get(session_id)
    target["kernel"], target["call"] = runtime.kernel, {
        "agent_id": info.agent_id if info is not None else "", "agent_name": "", "session_id": session_id,
        "provider": provider, "model": model, "iteration": 0, "purpose": "compaction"}
    summary, chunks, used_fallback = await summarise(get_registry(runtime.kernel), target, older, config)
    await runtime.store.compact_prefix(session_id, cut, Message("user", f"{SUMMARY_PREFIX}\n{summary}"), summary)
    return CompactionResult(summary, len(kept), len(older), chunks, used_fallback)

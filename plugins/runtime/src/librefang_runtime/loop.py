"""The agent loop: one user turn, from the user's message to the final reply (no HTTP here).

Each iteration repairs the history (:func:`~librefang_runtime.history.repair`), streams one model call
through the providers registry, and, when the model asks for tools, runs them and commits
``assistant{tool_use…}`` then ``user{tool_result…}`` before the next call. The turn ends at a reply
without tool calls, or fails after ``max_iterations`` calls. Every committed message goes through the
``commit`` callback at once, so a crash mid-turn loses nothing acknowledged; the next repair pass
fixes whatever pair a crash left open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from librefang_providers.api import (
    MAX_TOKENS,
    CompletionRequest,
    CompletionResponse,
    Message,
    StreamEvent,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    collect,
)

from librefang_runtime.repair_memo import RepairMemo
from librefang_runtime.tools import Policy, ToolContext, ToolOutcome, ToolRegistry, execute

log = logging.getLogger("librefang.runtime.loop")

SILENT_MARKERS = ("NO_REPLY", "[[silent]]")
CONTINUE_NUDGE = "Your reply was cut off by the output limit. Continue exactly where you stopped, without repeating."
EMPTY_REPLY_NUDGE = ("Your last reply was empty. Answer the user's last message now, in plain text "
                     "(or with exactly NO_REPLY if no reply is needed).")
THINK_TAG = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL | re.IGNORECASE)
MAX_TRACES = 500
SUMMARY_CHARS = 200


@dataclass
class LoopSettings:
    """Everything one turn needs to know that is not the history."""

    provider: str
    model: str
    system_prompt: str = ""
    max_tokens: int = 4096
    temperature: float | None = None
    max_iterations: int = 50
    tool_timeout: float = 120.0
    max_tool_result_chars: int = 16_000
    max_tool_calls_per_reply: int = 32
    loop_guard_warn: int = 3
    loop_guard_block: int = 5
    max_continuations: int = 5
    request_timeout: float | None = None
    fallback_models: list[Any] | None = None
    base_url: str | None = None  # the manifest's own endpoint and key variable for the primary model
    api_key_env: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseChange:
    """A loop event: the turn entered a phase (``thinking``, ``tool_use``, ``retrying``, ``response_complete``)."""

    phase: str
    detail: str | None = None
    type: str = "phase"


@dataclass
class ToolExecuted:
    """A loop event: a tool call finished (or was refused); ``content`` is what the model reads."""

    id: str
    name: str
    content: str
    is_error: bool
    status: str
    type: str = "tool_executed"


LoopEvent = StreamEvent | PhaseChange | ToolExecuted
Emit = Callable[[LoopEvent], Awaitable[None]]
Commit = Callable[[Message], Awaitable[None]]


@dataclass
class CallUsage:
    """Usage of one LLM call and the slot that served it."""

    provider: str
    model: str
    usage: Usage


@dataclass
class TurnResult:
    """What a turn produced. ``usage`` sums every call; ``provider``/``model`` served the last one."""

    response: str
    silent: bool
    iterations: int
    usage: Usage
    calls: list[CallUsage]
    provider: str
    model: str
    committed: list[Message]
    decision_traces: list[dict[str, Any]]
    thinking: str = ""
    cost_usd: float | None = None


class MaxIterationsExceeded(Exception):
    """The model still asked for tools after ``max_iterations`` calls; ``result`` holds the usage so far."""

    def __init__(self, iterations: int, result: TurnResult) -> None:
        super().__init__(f"the agent did not finish within {iterations} iterations")
        self.iterations = iterations
        self.result = result


def call_fingerprint(call: ToolUseBlock) -> str:
    """Same tool and same input (key order ignored) → same fingerprint (the loop guard's key)."""
    payload = json.dumps([call.name, call.input], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def split_thinking(text: str) -> tuple[str, str]:
    """(reply without ``<think>`` blocks, the thinking they held)."""
    if "<" not in text:  # no tag at all (the common case): what the regular expressions would give
        return text.strip(), ""
    thoughts = [m.strip() for m in THINK_TAG.findall(text)]
    return THINK_TAG.sub("", text).strip(), "\n".join(t for t in thoughts if t)


async def _no_emit(_event: LoopEvent) -> None:
    return None


async def _no_commit(_message: Message) -> None:
    return None


class AgentLoop:
    """Runs turns for one agent and session. ``llm`` is the providers registry (``stream(request,
    provider=…, fallback_models=…)``); ``allowed_tools`` are the names the agent may call."""

    def __init__(
        self,
        llm: Any,
        tools: ToolRegistry,
        settings: LoopSettings,
        context: ToolContext,
        *,
        allowed_tools: list[str] | None = None,
        policy: Policy | None = None,
        emit: Emit | None = None,
        commit: Commit | None = None,
        repairs: RepairMemo | None = None,
        definitions: list[Any] | None = None,
    ) -> None:
        self.llm = llm
        self.tools = tools
        self.settings = settings
        self.context = context
        self.allowed = list(filter(tools.tools.__contains__, allowed_tools or ()))  # the registered ones
        # What the model is offered on every call of the turn (``definitions``: the caller's, already
        # built for these tools, as the runtime keeps them per agent).
        self.definitions = list(definitions) if definitions is not None else tools.definitions(self.allowed)
        self.policy = policy
        self.emit = emit or _no_emit
        self.commit = commit or _no_commit
        self.guard: dict[str, int] = {}
        self.partial: TurnResult | None = None  # what a failed run had used (set when run raises)
        # The session's repair memo (kept across its turns by the runtime): each call's history is
        # the last one's plus what was committed since, and only that part needs checking.
        self.repairs = repairs if repairs is not None else RepairMemo()

    async def _tee(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        async for event in events:
            await self.emit(event)
            yield event

    async def _call(self, messages: list[Message], iteration: int = 0) -> CompletionResponse:
        s = self.settings
        request = CompletionRequest(
            model=s.model, messages=messages, system=s.system_prompt or None,
            tools=list(self.definitions), max_tokens=s.max_tokens, temperature=s.temperature,
            timeout=s.request_timeout, extra_body=dict(s.extra_body),
        )
        # before_llm_call / after_llm_call (budgets, metering): a refusal raises and fails the turn.
        hooks = getattr(self.context.kernel, "plugins", None)
        call = {"agent_id": self.context.agent_id, "agent_name": self.context.agent_name,
                "session_id": self.context.session_id, "provider": s.provider, "model": s.model,
                "iteration": iteration}
        if hooks is not None:
            await hooks.acall("before_llm_call", isolate=False, kernel=self.context.kernel, call=call)
        started = time.perf_counter()
        stream = self.llm.stream(request, provider=s.provider, fallback_models=s.fallback_models,
                                 base_url=s.base_url, api_key_env=s.api_key_env)
        try:
            # Nobody listens to a plain JSON turn's events: no relay generator around every one of them.
            response = await collect(stream if self.emit is _no_emit else self._tee(stream))
        finally:
            await stream.aclose()
        if hooks is not None:
            await hooks.acall("after_llm_call", kernel=self.context.kernel, call={
                **call, "provider": response.provider, "model": response.model, "usage": response.usage,
                "latency_ms": (time.perf_counter() - started) * 1000, "tool_calls": len(response.tool_calls)})
        return response

    async def _save(self, message: Message, working: list[Message], committed: list[Message]) -> None:
        await self.commit(message)
        working.append(message)
        committed.append(message)

    async def _run_tool(self, call: ToolUseBlock, index: int) -> ToolOutcome:
        s = self.settings
        if index >= s.max_tool_calls_per_reply:
            return ToolOutcome(ToolResultBlock(
                call.id, f"at most {s.max_tool_calls_per_reply} tool calls are run per reply; "
                "this one was skipped", True, call.name), "skipped")
        key = call_fingerprint(call)
        count = self.guard.get(key, 0) + 1
        self.guard[key] = count
        if count >= s.loop_guard_block:
            return ToolOutcome(ToolResultBlock(
                call.id, f"blocked by the loop guard: {call.name} was called {count} times with the same "
                "input in this turn. Do not call it again with this input; change approach or answer.",
                True, call.name), "blocked")
        outcome = await execute(
            self.tools, call, self.context, allowed=set(self.allowed), policy=self.policy,
            time_limit=s.tool_timeout, max_chars=s.max_tool_result_chars,
        )
        if count >= s.loop_guard_warn:
            outcome.result.content += (
                f"\n\n[loop guard: you have called {call.name} {count} times with the same input in this turn; "
                f"at {s.loop_guard_block} it will be blocked. Change approach.]"
            )
        return outcome

    async def run(self, history: list[Message], message: Message) -> TurnResult:
        """Run one turn: ``message`` after ``history``. Raises the providers' typed errors when a call
        fails for good, and :class:`MaxIterationsExceeded` when the model never stops calling tools."""
        s = self.settings
        working = list(history)
        committed: list[Message] = []
        usage = Usage()
        calls: list[CallUsage] = []
        traces: list[dict[str, Any]] = []
        earlier_text: list[str] = []
        thinking: list[str] = []
        nudged = False
        continued: list[str] = []  # pieces of a reply cut by max_tokens, continued in the next calls
        nudge: Message | None = None
        await self._save(message, working, committed)

        def result(text: str, silent: bool, iterations: int) -> TurnResult:
            last = calls[-1] if calls else CallUsage(s.provider, s.model, Usage())
            return TurnResult(text, silent, iterations, usage, calls, last.provider, last.model, committed, traces,
                              "\n".join(t for t in thinking if t))

        iteration = 0
        try:
            for iteration in range(1, s.max_iterations + 1):
                outgoing, report = self.repairs.repair(working + ([nudge] if nudge is not None else []))
                if report.changed:
                    log.info("history repaired before call %d: %s", iteration, report)
                nudge = None
                response = await self._call(outgoing, iteration)
                usage.add(response.usage)
                calls.append(CallUsage(response.provider, response.model, response.usage))
                thinking.extend(b.text for b in response.content if isinstance(b, ThinkingBlock))
                text, thought = split_thinking(response.text)
                if thought:
                    thinking.append(thought)
                tool_calls = response.tool_calls
                if tool_calls:
                    await self.emit(PhaseChange("tool_use", ", ".join(c.name for c in tool_calls)[:200]))
                    await self._save(Message("assistant", list(response.content)), working, committed)
                    if text:
                        earlier_text.append(text)
                    results: list[ToolResultBlock] = []
                    for index, call in enumerate(tool_calls):
                        outcome = await self._run_tool(call, index)
                        results.append(outcome.result)
                        await self.emit(ToolExecuted(call.id, call.name, outcome.result.content,
                                                     outcome.result.is_error, outcome.status))
                        if len(traces) < MAX_TRACES:
                            traces.append({
                                "tool_use_id": call.id, "tool_name": call.name, "input": call.input,
                                "rationale": text[:SUMMARY_CHARS] or None, "recovered_from_text": False,
                                "execution_ms": round(outcome.execution_ms, 3), "is_error": outcome.result.is_error,
                                "output_summary": outcome.result.content[:SUMMARY_CHARS], "iteration": iteration,
                                "timestamp": time.time(),
                            })
                    await self._save(Message("user", list(results)), working, committed)
                    continue
                if (response.stop_reason == MAX_TOKENS and text and not response.tool_calls
                        and len(continued) < s.max_continuations):
                    # Cut by the output limit: keep what came and ask for the rest (the ask is not stored).
                    piece = THINK_TAG.sub("", response.text)
                    continued.append(piece)
                    await self._save(Message("assistant", [TextBlock(piece)]), working, committed)
                    nudge = Message("user", CONTINUE_NUDGE)
                    await self.emit(PhaseChange("continuing", f"{len(continued)}/{s.max_continuations}"))
                    continue
                if continued:
                    whole = "".join(continued) + THINK_TAG.sub("", response.text)
                    if text:
                        await self._save(Message("assistant", [TextBlock(THINK_TAG.sub("", response.text))]),
                                         working, committed)
                    await self.emit(PhaseChange("response_complete"))
                    return result(whole.strip(), False, iteration)
                if not text and not nudged:
                    # One corrective retry; the nudge goes to the model but is not stored in the session.
                    nudged = True
                    nudge = Message("user", EMPTY_REPLY_NUDGE)
                    await self.emit(PhaseChange("retrying", "empty reply"))
                    continue
                stored = [b for b in response.content if not isinstance(b, TextBlock)]
                if text:
                    stored.append(TextBlock(text))
                    await self._save(Message("assistant", stored), working, committed)
                await self.emit(PhaseChange("response_complete"))
                if text.strip() in SILENT_MARKERS:
                    return result("", True, iteration)
                if not text:
                    text = "\n\n".join(earlier_text) or (
                        f"[The agent completed processing but returned no text response. "
                        f"({usage.input_tokens} in / {usage.output_tokens} out | {iteration} iter)]"
                    )
                return result(text, False, iteration)
        except BaseException:  # also a cancellation (stop): its tokens were spent all the same
            # Usage spent before the failure still has to be accounted for by the caller.
            self.partial = result("", False, iteration)
            raise
        raise MaxIterationsExceeded(s.max_iterations, result("\n\n".join(earlier_text), False, s.max_iterations))

"""The messaging service: from an agent id and a message to a finished turn (testable without HTTP).

:meth:`RuntimeService.prepare` does every check that can refuse a message (agent, size, provider
credentials, session ownership) before anything runs, so the HTTP layer can still answer with a
status code; :meth:`RuntimeService.run` then runs the turn under the session's lock, stores usage and
publishes ``runtime.turn_completed`` on the event bus.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import operator
import os
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from librefang.errors import ApiError, BadRequest, Conflict, PayloadTooLarge, PreconditionFailed
from librefang_agents import api as agents_api
from librefang_providers.api import (
    AllProvidersExhausted,
    AuthFailed,
    ContextTooLong,
    LLMError,
    Message,
    MissingApiKey,
    Overloaded,
    RateLimited,
    TextBlock,
    ToolResultBlock,
    UnknownProvider,
    Usage,
    get_registry,
)

from librefang_runtime import modules
from librefang_runtime.agent_view import AgentView, usable_tools
from librefang_runtime.attachments import model_client, user_message
from librefang_runtime.attachments import resolve as resolve_attachments
from librefang_runtime.compactor import needs_compaction
from librefang_runtime.config import RuntimeConfig
from librefang_runtime.history import trim
from librefang_runtime.loop import (
    AgentLoop,
    Emit,
    LoopSettings,
    MaxIterationsExceeded,
    PhaseChange,
    TurnResult,
)
from librefang_runtime.repair_memo import RepairMemo
from librefang_runtime.runs import Run, SessionLocks
from librefang_runtime.sessions import SessionStore
from librefang_runtime.tools import Deny, ToolContext, ToolRegistry

log = logging.getLogger("librefang.runtime")
_MESSAGE = operator.attrgetter("message")  # StoredMessage -> Message, at C speed

SOURCE = "runtime"
CATALOG_SERVICE = "providers.catalog"
BTW_PREFIX = "/btw "
TOUCH_INTERVAL = 10.0  # seconds between two last_active writes for one agent and session
MAX_TOUCHED = 10_000
MAX_VIEWS = 1_000
MAX_REPAIR_MEMOS = 256  # sessions whose last repaired history is kept (as many as the window cache)


@dataclass
class Turn:
    """A message that passed every check, ready to run."""

    agent_id: str
    agent_name: str
    session_id: str
    pinned: bool
    persist: bool
    load_history: bool
    text: str
    show_thinking: bool | None
    settings: LoopSettings
    allowed_tools: list[str]
    max_history: int
    context: ToolContext
    context_window: int | None = None
    attachments: Any = None  # attachments.Attached: the files the message attaches
    module: Any = None  # an AgentModule (librefang_runtime.modules) answers instead of the LLM loop
    definitions: list[Any] | None = None  # the definitions of ``allowed_tools`` (the agent view's)


def llm_error(exc: LLMError) -> ApiError:
    """The HTTP error for a provider failure that survived retries and fallbacks."""
    details = {"provider": exc.provider, "model": exc.model} if exc.provider else None
    if isinstance(exc, MissingApiKey):
        return PreconditionFailed(exc.message, code="provider_auth_missing", details=details)
    if isinstance(exc, UnknownProvider):
        return PreconditionFailed(exc.message, code="provider_unknown", details=details)
    if isinstance(exc, AuthFailed):
        return ApiError(f"the provider refused the credentials: {exc.message}", status=502,
                        code="provider_auth_failed", details=details)
    if isinstance(exc, RateLimited | Overloaded):
        retry = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(max(1, int(retry)))} if retry else None
        return ApiError(f"the provider is busy: {exc.message}", status=503, code=exc.code, headers=headers,
                        details=details)
    if isinstance(exc, AllProvidersExhausted):
        return ApiError(exc.message, status=502, code=exc.code,
                        details={"attempts": [a.describe() for a in exc.attempts]})
    if isinstance(exc, ContextTooLong):
        return ApiError(exc.message, status=502, code=exc.code, details=details)
    return ApiError(f"the model call failed: {exc.message}", status=502, code=exc.code, details=details)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_session_id(value: str) -> str:
    """The canonical form of a session id (400 ``invalid_session_id`` when it is not a UUID)."""
    if type(value) is str and _CANONICAL_UUID.fullmatch(value):  # already canonical: str(UUID(value)) == value
        return value
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise BadRequest(f"invalid session id {value[:64]!r}: expected a UUID", code="invalid_session_id") from None


class RuntimeService:
    """The runtime of one kernel (``kernel.services["runtime"]``)."""

    def __init__(self, kernel: Any, config: RuntimeConfig, tools: ToolRegistry) -> None:
        self.kernel = kernel
        self.config = config
        self.tools = tools
        self.store = SessionStore(kernel.db, config.max_session_messages)
        self.locks = SessionLocks()
        # agent id -> session id -> the turn running in that session (for stop and "active")
        self.running: dict[str, dict[str, Run]] = {}
        self.ws_connections: dict[str, int] = {}  # client IP -> open WebSockets (bounded by the limit)
        self._web_client: Any = None
        self._touched: dict[tuple[str, str | None], float] = {}
        # (agent id, name, mode) -> what turns derive from the agent (bounded, oldest go first)
        self._views: dict[tuple[str, str, str], AgentView] = {}
        # session id -> its last repaired history (LRU); self-checking, so no write path needs to drop it
        self._repairs: OrderedDict[str, RepairMemo] = OrderedDict()

    def web_client(self) -> Any:
        """The HTTP client of ``web_fetch`` (created on first use, closed by :meth:`aclose`)."""
        if self._web_client is None:
            import httpx

            self._web_client = httpx.AsyncClient(limits=httpx.Limits(max_connections=50), trust_env=False)
        return self._web_client

    async def aclose(self) -> None:
        """Stop every running turn and close the web client (plugin shutdown)."""
        for agent_id in list(self.running):
            await self.stop(agent_id)
        if self._web_client is not None:
            await self._web_client.aclose()
            self._web_client = None
        await self.store.aclose()

    @property
    def agents(self) -> Any:
        return agents_api.registry(self.kernel)

    def check_size(self, text: str) -> None:
        """413 ``message_too_large`` beyond ``[runtime] max_message_bytes`` / ``max_message_chars``."""
        chars = len(text)
        # A character is at most 4 bytes in UTF-8: a short text needs no encoding to be measured.
        size = chars if chars * 4 <= self.config.max_message_bytes else len(text.encode("utf-8"))
        if size > self.config.max_message_bytes or chars > self.config.max_message_chars:
            raise PayloadTooLarge(
                f"message is {size} bytes / {len(text)} characters; the limit is {self.config.max_message_bytes} "
                f"bytes and {self.config.max_message_chars} characters", code="message_too_large")

    async def resolve_session(self, record: Any, requested: str | None, manifest: Any = None) -> tuple[str, bool]:
        """(session id, pinned by the caller). A pinned session of another agent is 400. ``manifest``:
        the record's, when the caller has it validated already."""
        if requested:
            session_id = parse_session_id(requested)
            # With the window cache, an existing session is read (and cached) here with the history
            # a turn of this agent loads: the turn then opens it without a database read.
            limit = (manifest or record.parsed()).max_history_messages
            owner = await self.store.agent_of(session_id, limit)
            if owner is not None and owner != record.id:
                raise BadRequest("the session belongs to another agent", code="session_agent_mismatch")
            return session_id, True
        if (manifest or record.parsed()).session_mode == "new" or not record.session_id:
            return str(uuid.uuid4()), False
        return record.session_id, False

    def resolve_model(self, manifest: Any) -> tuple[str, str]:
        """The provider and model that will serve, with 412 when there is none or it lacks credentials."""
        provider, model = manifest.model.provider, manifest.model.model
        if provider == "default" or model == "default":  # only then is [default_model] read
            provider, model = agents_api.resolve_model(provider, model, self.agents.default_model())
        if not provider or provider == "auto" or not model:
            raise PreconditionFailed(
                "the agent has no provider and model: set them in its manifest or in [default_model]",
                code="provider_not_configured")
        try:
            get_registry(self.kernel).driver(provider, base_url=manifest.model.base_url,
                                             api_key_env=manifest.model.api_key_env)
        except MissingApiKey as exc:
            raise PreconditionFailed(exc.message, code="provider_auth_missing",
                                     details={"provider": provider}) from None
        except UnknownProvider as exc:
            raise PreconditionFailed(exc.message, code="provider_unknown", details={"provider": provider}) from None
        return provider, model

    async def prepare(self, agent_id: str, body: Any) -> Turn:
        """Check a message (``MessageRequest``) for an agent: 400 bad id or session, 404 unknown
        agent, 413 too large, 412 provider not usable."""
        record = await self.agents.get(agent_id)
        self.check_size(body.message)
        attached = (await resolve_attachments(self.kernel, record.id, body.attachments, self.config)
                    if body.attachments else None)
        view = self._views.get((record.id, record.name, record.mode))
        manifest = view.manifest if view is not None and view.source == record.manifest else record.parsed()
        module = modules.resolve(self, manifest)  # a plugin-served module (wasm:...) needs no model: 412 if unserved
        provider, model = (module.scheme, module.module) if module else self.resolve_model(manifest)
        text = body.message
        ephemeral = body.ephemeral
        if text.startswith(BTW_PREFIX):  # a side question: answered without touching the conversation
            ephemeral, text = True, text[len(BTW_PREFIX):]
        if not text.strip() and attached is None:
            raise BadRequest("the message is empty", code="empty_message")
        if record.state == "Suspended":
            raise Conflict(f"agent {record.name!r} is suspended: resume it first", code="agent_suspended")
        if ephemeral:  # a session of its own that is never stored: it waits for no other turn
            session_id, pinned = str(uuid.uuid4()), True
        else:
            session_id, pinned = await self.resolve_session(record, body.session_id, manifest)
        if body.is_group and body.sender_name:
            text = f"[{body.sender_name}]: {text}"
        view = self._view(record, manifest)
        allowed = view.allowed
        cfg = self.config
        max_iterations = manifest.autonomous.max_iterations if manifest.autonomous else cfg.max_iterations
        settings = LoopSettings(
            provider=provider, model=model, max_tokens=manifest.model.max_tokens,
            temperature=manifest.model.temperature, max_iterations=max_iterations,
            tool_timeout=cfg.tool_timeout_secs, max_tool_result_chars=cfg.max_tool_result_chars,
            max_tool_calls_per_reply=cfg.max_tool_calls_per_reply, loop_guard_warn=cfg.loop_guard_warn,
            loop_guard_block=cfg.loop_guard_block,
            base_url=manifest.model.base_url, api_key_env=manifest.model.api_key_env,
            fallback_models=[dict(f) for f in view.fallback_models] or None,
        )
        workspace = view.workspace
        # Made on first use, and again if it was removed: one stat of a local folder per turn (as
        # Path.is_dir did, without pathlib's own work).
        if workspace is None or not os.path.isdir(view.workspace_path):  # noqa: ASYNC240
            workspace = view.workspace = agents_api.workspace_of(self.kernel, record)
            view.workspace_path = os.fspath(workspace)
        context = ToolContext(kernel=self.kernel, agent_id=record.id, agent_name=record.name, session_id=session_id,
                              workspace=workspace)
        settings.system_prompt = view.system_prompt(record.name)
        return Turn(
            agent_id=record.id, agent_name=record.name, session_id=session_id, pinned=pinned,
            persist=not (ephemeral or body.incognito), load_history=not ephemeral, text=text,
            show_thinking=body.show_thinking, settings=settings, allowed_tools=allowed,
            max_history=manifest.max_history_messages, context=context, attachments=attached,
            context_window=manifest.model.context_window, module=module, definitions=view.definitions,
        )

    def repair_memo(self, session_id: str) -> RepairMemo:
        """The session's :class:`RepairMemo` (the caller holds the session's lock)."""
        memo = self._repairs.get(session_id)
        if memo is None:
            memo = self._repairs[session_id] = RepairMemo()
            while len(self._repairs) > MAX_REPAIR_MEMOS:
                self._repairs.popitem(last=False)
        else:
            self._repairs.move_to_end(session_id)
        return memo

    def _view(self, record: Any, manifest: Any) -> AgentView:
        """What a turn derives from the agent's name, mode and manifest, computed again only when one
        of them changed (not for writes of other columns: the ``last_active`` a turn writes, state)."""
        key = (record.id, record.name, record.mode)
        view = self._views.get(key)
        if view is None or view.source != record.manifest:
            allowed = usable_tools(manifest, agents_api.visible_tools(manifest, record.mode, self.tools.names()))
            view = AgentView(
                manifest=manifest, allowed=allowed, definitions=self.tools.definitions(allowed),
                fallback_models=[f.model_dump(exclude_none=True, include={"provider", "model", "base_url", "api_key_env"})
                                 for f in manifest.fallback_models],
                source=copy.deepcopy(record.manifest))
            self._views.pop(key, None)
            if len(self._views) >= MAX_VIEWS:
                self._views.pop(next(iter(self._views)))
            self._views[key] = view
        return view

    async def _sections(self, turn: Turn) -> list[str]:
        sections: list[str] = []
        for _, value in await self.kernel.plugins.acall(
                "before_prompt_build", agent_id=turn.agent_id, session_id=turn.session_id, message=turn.text,
                kernel=self.kernel, incognito=not turn.persist):
            if isinstance(value, str):
                sections.append(value)
            elif isinstance(value, list):
                sections.extend(v for v in value if isinstance(v, str))
        return sections

    async def policy(self, call: Any, context: ToolContext) -> Deny | None:
        """Ask each ``before_tool_call`` implementation in turn; the first refusal wins and stops the
        asking (so a human approval gate, marked ``trylast``, is never asked about a call an automated
        check already refused); a failure refuses."""
        host = self.kernel.plugins
        for name, _fn in host.impls("before_tool_call"):
            try:
                verdicts = await host.acall("before_tool_call", plugin=name, isolate=False, call=call, context=context)
            except Exception as exc:
                log.warning("before_tool_call of %s failed for %s: %s: %s", name, call.name, type(exc).__name__, exc)
                return Deny(f"the policy check failed ({type(exc).__name__})")
            for _, verdict in verdicts:
                if isinstance(verdict, Deny):
                    return verdict
        return None

    async def run(self, turn: Turn, emit: Emit | None = None) -> TurnResult:
        """Run ``turn`` under its session's lock (callers for one session run one at a time, in order)."""
        async with self.locks.hold(turn.session_id):
            history: list[Message] = []
            if turn.persist:
                info, stored = await self.store.open_turn(turn.session_id, turn.agent_id, turn.max_history)
                history = trim(list(map(_MESSAGE, stored)), turn.max_history)
                if await self._auto_compact(turn, info.message_count, history, emit):
                    stored = await self.store.load(turn.session_id, limit=turn.max_history)
                    history = trim(list(map(_MESSAGE, stored)), turn.max_history)
            elif turn.load_history:
                stored = await self.store.load(turn.session_id, limit=turn.max_history)
                history = trim(list(map(_MESSAGE, stored)), turn.max_history)
            sections = await self._sections(turn)
            if sections:
                turn.settings.system_prompt += "\n\n" + "\n\n".join(sections)
            # Committed messages are written in batches: when a tool round is complete (its results are
            # in) and at the end of the turn together with its usage; one transaction each.
            pending: list[Message] = []

            async def commit(message: Message) -> None:
                if not turn.persist:
                    return
                pending.append(message)
                if any(isinstance(b, ToolResultBlock) for b in message.blocks()):
                    await self.store.write(turn.session_id, pending[:])
                    pending.clear()

            repairs = self.repair_memo(turn.session_id) if turn.load_history else None
            llm = await model_client(get_registry(self.kernel), self.kernel, turn, history, self.config, repairs)
            loop: Any = AgentLoop(llm, self.tools, turn.settings, turn.context, allowed_tools=turn.allowed_tools,
                                  policy=self.policy, emit=emit, commit=commit, repairs=repairs,
                                  definitions=turn.definitions) \
                if turn.module is None else modules.ModuleLoop(turn.module, turn, emit=emit, commit=commit)
            started = time.perf_counter()
            # The loop runs in the caller's task (no task of its own: one fewer task and two fewer
            # event-loop steps per turn). ``stop`` cancels this task through its Run, which counts
            # its own cancellations, so a stop is told apart from the caller going away.
            task = asyncio.current_task()
            assert task is not None
            entry = Run(task)
            self.running.setdefault(turn.agent_id, {})[turn.session_id] = entry
            message = user_message(turn.text, turn.attachments)
            if type(message.content) is str and message.content:
                # In the form it is stored and read back in (one text block; the repair pass sends that
                # form anyway): the next turn's history then holds an equal copy, and the session's
                # repair memo finds the whole last history again at once.
                message = Message("user", [TextBlock(message.content)])
            try:
                result = await loop.run(history, message)
            except asyncio.CancelledError:
                if task.cancelling() <= entry.stops:
                    # A stop (or a cancellation from inside the loop, not of this task: as when the
                    # loop had a task of its own): this caller goes on and answers 409.
                    entry.loop_ended()
                    if loop.partial is not None:
                        await self._account(turn, loop.partial, started, pending, outcome="cancelled")
                    raise ApiError("the run was cancelled", status=409, code="run_cancelled") from None
                # Our caller is going away (client disconnect): the run is cancelled with it, and
                # what it had committed is still written.
                entry.loop_ended()
                if pending:
                    await asyncio.shield(self.store.write(turn.session_id, pending[:]))
                raise
            except MaxIterationsExceeded as exc:
                entry.loop_ended()
                await self._account(turn, exc.result, started, pending, outcome="error", error="max_iterations_exceeded")
                raise ApiError(str(exc), status=502, code="max_iterations_exceeded",
                               details={"iterations": exc.iterations}) from None
            except LLMError as exc:
                entry.loop_ended()
                if loop.partial is not None:
                    await self._account(turn, loop.partial, started, pending, outcome="error", error=exc.code)
                raise llm_error(exc) from None
            finally:
                entry.loop_ended()  # (also a stop the loop swallowed)
                self._end_run(turn, entry)
            await self._account(turn, result, started, pending)
            return result

    def _end_run(self, turn: Turn, entry: Run) -> None:
        """The turn of ``entry`` ended: forget it and wake stop()'s waiters."""
        sessions_of = self.running.get(turn.agent_id)
        if sessions_of is not None:
            if sessions_of.get(turn.session_id) is entry:
                del sessions_of[turn.session_id]
            if not sessions_of:
                del self.running[turn.agent_id]
        if entry.ended is not None and not entry.ended.done():
            entry.ended.set_result(None)

    async def _auto_compact(self, turn: Turn, count: int, window: list[Message], emit: Emit | None) -> bool:
        """Compact the session before the turn when it passed a ``[compaction]`` threshold."""
        config = self.kernel.config.section("compaction")
        over_count = bool(config.threshold_messages) and count > config.threshold_messages
        # Not over the count: only the token share can trigger it, and only with a known context window.
        if not over_count and (not turn.context_window or not needs_compaction(
                window, config.model_copy(update={"threshold_messages": 0}), turn.context_window)):
            return False
        from librefang_runtime.compactor import compact

        if emit is not None:
            await emit(PhaseChange("compacting"))
        s = turn.settings
        result = await compact(self, turn.session_id, s.provider, s.model, config, s.base_url, s.api_key_env,
                               use_llm=turn.module is None)
        return result is not None

    async def compact_now(self, record: Any, session_id: str | None = None) -> Any:
        """Compact a session of the agent (default: its canonical one) under the session's lock."""
        from librefang_runtime.compactor import compact

        manifest = record.parsed()
        module = modules.resolve(self, manifest)  # a module agent has no model: plain summary
        provider, model = (module.scheme, module.module) if module else self.resolve_model(manifest)
        target = session_id or record.session_id
        async with self.locks.hold(target):
            if await self.store.get(target) is None:
                return None
            return await compact(self, target, provider, model, self.kernel.config.section("compaction"),
                                 manifest.model.base_url, manifest.model.api_key_env, use_llm=module is None)

    def active(self, session_id: str) -> bool:
        """Whether a turn is running in ``session_id``."""
        return any(session_id in runs for runs in self.running.values())

    async def stop(self, agent_id: str, session_id: str | None = None) -> bool:
        """Cancel the running turns of an agent (or of one of its sessions); True when one was running.
        What the turns had committed stays; the next turn's repair closes any open tool call."""
        runs = self.running.get(agent_id, {})
        ended = [run.stop() for sid, run in list(runs.items()) if session_id is None or sid == session_id]
        if ended:
            await asyncio.wait(ended, timeout=10)
        return bool(ended)

    async def cost(self, result: TurnResult) -> float | None:
        """USD cost of the turn's calls from the model catalog (None when it prices none of them)."""
        catalog = self.kernel.services.get(CATALOG_SERVICE)
        if catalog is None:
            return None
        total: float | None = None
        for call in result.calls:
            value = await catalog.call_cost(call.provider, call.model, call.usage)
            if value is not None:
                total = (total or 0.0) + value
        return total

    async def _account(self, turn: Turn, result: TurnResult, started: float, pending: list[Message], *,
                       outcome: str = "ok", error: str | None = None) -> None:
        """Store the turn's last messages and its usage in one transaction (also for a failed or
        cancelled turn: its tokens were spent), publish ``runtime.turn_completed`` and call
        ``after_turn`` hooks."""
        result_cost = result.cost_usd = await self.cost(result)
        usage: Usage = result.usage
        latency_ms = (time.perf_counter() - started) * 1000
        if turn.persist:
            row = self.store.usage_row(agent_id=turn.agent_id, session_id=turn.session_id, provider=result.provider,
                                       model=result.model, usage_=usage, cost_usd=result_cost,
                                       iterations=result.iterations, outcome=outcome, error=error,
                                       latency_ms=latency_ms, traces=result.decision_traces)
            await self.store.write(turn.session_id, pending[:], row)
            pending.clear()
            await self._touch(turn)
        summary = {
            "agent_id": turn.agent_id, "name": turn.agent_name, "session_id": turn.session_id,
            "provider": result.provider, "model": result.model, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens, "cost_usd": result_cost,
            "iterations": result.iterations, "outcome": outcome, "latency_ms": round(latency_ms, 3),
        }
        self.kernel.bus.publish("runtime.turn_completed", summary, source=SOURCE)
        await self.kernel.plugins.acall("after_turn", kernel=self.kernel,
                                        turn={**summary, "response": result.response, "silent": result.silent,
                                              "message": turn.text, "incognito": not turn.persist})

    async def _touch(self, turn: Turn) -> None:
        """Tell the registry the agent was active (and its current session). Throttled per agent and
        session: a busy agent's ``last_active`` need not cost a write per turn."""
        key = (turn.agent_id, None if turn.pinned else turn.session_id)
        now = time.monotonic()
        last = self._touched.get(key)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        if len(self._touched) >= MAX_TOUCHED:
            self._touched.clear()
        self._touched[key] = now
        try:
            # In line with this plugin's own writes: SQLite serves one writer at a time, and a write
            # that waits in SQLite's busy handler costs every other turn far more than one queued here.
            async with self.store.writing():
                await self.agents.touch(turn.agent_id, key[1])
        except ApiError:  # the agent was killed during the turn: nothing to touch
            pass

    def response(self, turn: Turn, result: TurnResult) -> dict[str, Any]:
        """The ``MessageResponse`` JSON (empty optional fields left out, as the reference does)."""
        body: dict[str, Any] = {
            "response": result.response, "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens, "iterations": result.iterations,
            "provider": result.provider, "model": result.model,
        }
        if result.cost_usd is not None:
            body["cost_usd"] = result.cost_usd
        if result.decision_traces:
            body["decision_traces"] = result.decision_traces
        if result.silent:
            body["silent"] = True
        if result.thinking and turn.show_thinking is not False:
            body["thinking"] = result.thinking
        if not turn.pinned:
            body["session_id"] = turn.session_id
        return body

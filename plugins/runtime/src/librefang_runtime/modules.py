"""Agent modules: agents whose manifest names ``module = "<scheme>:<target>"`` are answered by a
plugin's handler instead of the LLM loop.

A plugin registers a handler for a scheme through the ``register_agent_modules`` hook (the sandbox
plugin serves ``wasm``). ``builtin:*`` modules are the LLM loop itself. When a message arrives for
an agent whose scheme has a handler, :class:`ModuleLoop` stands in for
:class:`~librefang_runtime.loop.AgentLoop`: same ``run(history, message)`` and ``partial``, so the
turn goes through the runtime's ordinary path (session lock, storage of the user message and the
reply, usage row with zero tokens, ``runtime.turn_completed``, ``after_turn``, SSE / WebSocket /
JSON responses). A scheme nobody serves is refused when the message is checked (412
``agent_module_unavailable``), before anything runs or is stored. A handler that fails raises
:class:`ModuleError`; the turn then fails with that status and code, nothing of it is stored, and
the failure is audited (``AgentModuleFailed``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from librefang.errors import ApiError, PreconditionFailed
from librefang.plugins import PluginBound
from librefang_providers.api import ContentComplete, Message, TextBlock, TextDelta, Usage

from librefang_runtime.loop import SILENT_MARKERS, Emit, PhaseChange, TurnResult
from librefang_runtime.tools import ToolContext

log = logging.getLogger("librefang.runtime.modules")

SCHEME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
BUILTIN = "builtin"  # the LLM loop: never dispatched to a plugin
MAX_HISTORY_FOR_MODULE = 50  # messages handed to a handler (it may load more through the session store)


class ModuleError(Exception):
    """Raised by a module handler: the turn fails with ``status`` / ``code`` and this message."""

    def __init__(self, message: str, *, code: str = "agent_module_failed", status: int = 502,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details


@dataclass
class ModuleReply:
    """What a handler may return instead of plain text: the reply, and whether it is silent."""

    text: str
    silent: bool = False


@dataclass
class ModuleRequest:
    """One message for a module agent, as its handler receives it."""

    kernel: Any
    agent_id: str
    agent_name: str
    module: str  # the whole manifest value, e.g. "wasm:echo.wat"
    scheme: str  # "wasm"
    target: str  # "echo.wat"
    session_id: str
    message: str
    history: list[Message]  # the session's earlier messages (at most MAX_HISTORY_FOR_MODULE)
    context: ToolContext  # agent, session and workspace, as tools get them


Handler = Callable[[ModuleRequest], Awaitable[str | ModuleReply] | str | ModuleReply]


@dataclass
class AgentModule:
    """A resolved module: the handler that will answer the agent."""

    scheme: str
    target: str
    module: str
    handler: Handler
    owner: str = ""


@dataclass
class ModuleRegistry:
    """Scheme -> handler, filled by ``register_agent_modules``; duplicates are refused."""

    handlers: dict[str, tuple[str, Handler]] = field(default_factory=dict)

    def register(self, scheme: str, handler: Handler, *, owner: str = "") -> None:
        """Serve ``scheme:`` modules with ``handler``; ``ValueError`` for a bad or taken scheme."""
        if not isinstance(scheme, str) or not SCHEME.match(scheme):
            raise ValueError(f"module scheme {scheme!r} must match {SCHEME.pattern}")
        if scheme == BUILTIN:
            raise ValueError("the builtin scheme is the runtime's own LLM loop")
        if not callable(handler):
            raise ValueError(f"the handler of module scheme {scheme!r} is not callable")
        if scheme in self.handlers:
            raise ValueError(f"module scheme {scheme!r} is already served by {self.handlers[scheme][0] or 'another plugin'}")
        self.handlers[scheme] = (owner, handler)

    def unregister(self, scheme: str, *, owner: str | None = None) -> bool:
        """Stop serving ``scheme`` (only when ``owner`` matches, if given); True when it was served."""
        found = self.handlers.get(scheme)
        if found is None or (owner is not None and found[0] != owner):
            return False
        del self.handlers[scheme]
        return True

    def schemes(self) -> dict[str, str]:
        """Scheme -> the plugin serving it."""
        return {scheme: owner for scheme, (owner, _) in sorted(self.handlers.items())}

    def resolve(self, module: str) -> AgentModule | None:
        """The module of a manifest: ``None`` for ``builtin:*`` (the LLM loop), 412
        ``agent_module_unavailable`` for a scheme no running plugin serves."""
        scheme, _, target = module.partition(":")
        if scheme == BUILTIN:
            return None
        found = self.handlers.get(scheme)
        if found is None:
            served = ", ".join(sorted(self.handlers)) or "none"
            raise PreconditionFailed(
                f"the agent's module {module[:200]!r} cannot run: no installed plugin serves '{scheme[:32]}:' "
                f"modules (served here: {served})", code="agent_module_unavailable",
                details={"scheme": scheme[:32], "served": sorted(self.handlers)})
        owner, handler = found
        return AgentModule(scheme, target, module, handler, owner)


def collect_modules(kernel: Any) -> ModuleRegistry:
    """The module registry: every plugin's ``register_agent_modules``. A refused registration is
    logged and skipped; the plugin's other schemes are kept."""
    registry = ModuleRegistry()

    def register(plugin: str, scheme: str, handler: Handler) -> None:
        try:
            registry.register(scheme, handler, owner=plugin)
        except ValueError as exc:
            log.error("agent module scheme of %s refused: %s", plugin, exc)
            raise

    kernel.plugins.call("register_agent_modules", register=PluginBound(register))
    return registry


def resolve(service: Any, manifest: Any) -> AgentModule | None:
    """The module serving an agent (None: the LLM loop); see :meth:`ModuleRegistry.resolve`."""
    registry: ModuleRegistry | None = getattr(service, "modules", None)
    if registry is None:
        registry = ModuleRegistry()
    return registry.resolve(manifest.module)


class ModuleLoop:
    """Stands in for :class:`~librefang_runtime.loop.AgentLoop` for a module agent: one handler call
    per turn, no model, no tools (the handler does its own work under its own limits)."""

    def __init__(self, module: AgentModule, turn: Any, *, emit: Emit | None = None,
                 commit: Callable[[Message], Awaitable[None]] | None = None) -> None:
        self.module = module
        self.turn = turn
        self.emit = emit
        self.commit = commit
        self.partial: TurnResult | None = None

    def _result(self, text: str, silent: bool, committed: list[Message]) -> TurnResult:
        return TurnResult(text, silent, 1, Usage(), [], self.module.scheme, self.module.module, committed, [])

    async def run(self, history: list[Message], message: Message) -> TurnResult:
        """Run the turn: ``message`` (committed first), the handler's reply (committed after)."""
        turn, module = self.turn, self.module
        committed: list[Message] = []
        text = message.content if isinstance(message.content, str) else "".join(
            b.text for b in message.blocks() if isinstance(b, TextBlock))
        request = ModuleRequest(
            kernel=turn.context.kernel, agent_id=turn.agent_id, agent_name=turn.agent_name, module=module.module,
            scheme=module.scheme, target=module.target, session_id=turn.session_id, message=text,
            history=list(history[-MAX_HISTORY_FOR_MODULE:]), context=turn.context)
        try:
            value = module.handler(request)
            if inspect.isawaitable(value):
                value = await value
        except asyncio.CancelledError:
            self.partial = self._result("", False, committed)
            raise
        except ModuleError as exc:
            await self._audit_failure(exc.code, exc.message)
            raise ApiError(exc.message, status=exc.status, code=exc.code, details=exc.details) from None
        except ApiError as exc:
            await self._audit_failure(exc.code, exc.message)
            raise
        except Exception as exc:  # a broken handler fails this turn, never the daemon
            log.exception("module handler of %s failed for agent %s", module.scheme, turn.agent_name)
            await self._audit_failure("agent_module_failed", type(exc).__name__)
            raise ApiError(f"the {module.scheme} module of agent {turn.agent_name!r} failed: {type(exc).__name__}",
                           status=502, code="agent_module_failed") from None
        reply = value if isinstance(value, ModuleReply) else ModuleReply("" if value is None else str(value))
        silent = reply.silent or reply.text.strip() in SILENT_MARKERS
        # Stored only now: a failed handler leaves the session exactly as it was before the message.
        for stored in (message, *([Message("assistant", [TextBlock(reply.text)])] if reply.text and not silent else [])):
            if self.commit is not None:
                await self.commit(stored)
            committed.append(stored)
        if self.emit is not None:
            if reply.text and not silent:
                await self.emit(TextDelta(reply.text))
            await self.emit(ContentComplete("end_turn", Usage(), module.scheme, module.module))
            await self.emit(PhaseChange("response_complete"))
        return self._result("" if silent else reply.text, silent, committed)

    async def _audit_failure(self, code: str, message: str) -> None:
        kernel = self.turn.context.kernel
        try:
            await kernel.audit.record("AgentModuleFailed", actor=f"agent:{self.turn.agent_name}",
                                      target=self.module.module[:200],
                                      detail={"agent_id": self.turn.agent_id, "session_id": self.turn.session_id,
                                              "code": code, "error": message[:500]}, outcome="error")
        except Exception as exc:  # the audit chain failing must not hide the module's own error
            log.warning("could not audit a module failure: %s", exc)

"""Hooks the runtime plugin offers to other plugins (added to the plugin manager by the host)."""

from __future__ import annotations

from typing import Any

from librefang import hookspec


@hookspec
def register_tools(register: Any, kernel: Any) -> None:
    """Add tools agents may call: ``register(Tool(name, description, handler, input_schema))`` with
    :class:`librefang_runtime.api.Tool`.

    Called once when the runtime starts. ``kernel`` is the starting kernel (read your configuration
    section with ``kernel.config.section(...)``; other plugins' services may not be started yet, so
    look them up in the handler, not here); an implementation that does not need it leaves it out of
    its signature. The handler receives ``(input, context)`` and returns the result text (it may be
    ``async def``; raise ``ToolError`` for an error result). A name already registered, a bad name or
    a schema that is not a JSON Schema object fails the registering plugin's tools only. Plain ``def``.
    """


@hookspec
def register_agent_modules(register: Any) -> None:
    """Serve agents whose manifest says ``module = "<scheme>:<target>"``: ``register("wasm", handler)``.

    Called once when the runtime starts. When a message arrives for an agent whose module has a
    registered scheme, the runtime calls ``handler(request)`` instead of the LLM loop, with a
    :class:`librefang_runtime.api.ModuleRequest` (``kernel``, ``agent_id``, ``agent_name``,
    ``module``, ``scheme``, ``target``, ``session_id``, ``message``, ``history``, ``context``). The
    handler returns the reply text (or a ``ModuleReply(text, silent)``) and may be ``async def``;
    raising :class:`librefang_runtime.api.ModuleError` fails the turn with its status and code
    (nothing of the turn is stored; the failure is audited). The reply goes through the ordinary turn
    path: session storage, JSON/SSE/WebSocket responses, a usage row with zero tokens,
    ``runtime.turn_completed`` and ``after_turn``. ``builtin`` is the LLM loop and cannot be
    registered; a scheme already served, or a bad name, is refused. A scheme nobody serves makes a
    message to such an agent fail with 412 ``agent_module_unavailable``. Plain ``def``.
    """


@hookspec
def before_tool_call(call: Any, context: Any) -> Any:
    """Policy check before a tool runs (approvals, taint, budgets).

    Receives the :class:`ToolUseBlock` (``call.name``, ``call.input``) and the
    :class:`librefang_runtime.api.ToolContext` (agent id and name, session id, workspace). Return
    ``None`` to have no objection, or :class:`librefang_runtime.api.Deny` ``(reason)`` to refuse the
    call: the model then receives an error result naming the reason. The first refusal wins. An
    implementation that raises refuses the call too (fail closed). May be ``async def``.
    """


@hookspec
def before_prompt_build(agent_id: str, session_id: str, message: str, kernel: Any, incognito: bool) -> Any:
    """Contribute context to the system prompt of a turn (memory recall, live context).

    Receives the agent id, the session id, the user's message text, the kernel, and ``incognito``
    (true when nothing of the turn is stored: an incognito or ephemeral message; reading is fine,
    remembering anything of it is not). Return a string (one section), a list of strings, or
    ``None``. Sections are appended after the tool list, in plugin order. An implementation that
    raises is logged and skipped. May be ``async def``.
    """


@hookspec
def after_turn(kernel: Any, turn: dict[str, Any]) -> Any:
    """Called after every turn with its summary: ``agent_id``, ``session_id``, ``provider``, ``model``,
    ``input_tokens``, ``output_tokens``, ``cost_usd``, ``iterations``, ``outcome`` (``ok``, ``error``,
    ``cancelled``), ``latency_ms``, ``response``, ``silent``, ``message`` (the user's message text) and
    ``incognito`` (nothing of the turn is stored: memory extraction must not write) (metering,
    budgets, memory extraction). The return value is ignored; an exception is logged. May be ``async def``.
    """


@hookspec
def before_llm_call(kernel: Any, call: dict[str, Any]) -> Any:
    """Called before every model call of an agent turn and of a session compaction (budgets, quotas),
    with ``call``: ``agent_id``, ``agent_name``, ``session_id``, ``provider``, ``model`` (the slot asked
    for) and ``iteration`` (0 and ``purpose = "compaction"`` for a compaction summary, whose refusal
    makes the compaction use its plain summary instead).

    Return ``None`` to let the call go. Raise a :class:`librefang.errors.ApiError` (for example 429
    ``budget_exceeded``) to refuse it: nothing is sent to the provider and the turn fails with that
    error. Any other exception refuses the call too (fail closed). May be ``async def``.
    """


@hookspec
def after_llm_call(kernel: Any, call: dict[str, Any]) -> Any:
    """Called after every successful model call of an agent turn or a compaction (metering), with ``call``: the keys of
    ``before_llm_call`` where ``provider``/``model`` name the slot that actually served, plus ``usage``
    (:class:`librefang_providers.api.Usage`), ``latency_ms`` and ``tool_calls`` (how many the model asked
    for). The return value is ignored; an exception is logged. May be ``async def``.
    """

"""The tool registry: tools any plugin adds through ``register_tools``, and their guarded execution.

Executing a call goes through, in order: the agent's visible tool list, input checks against the
tool's schema (required keys, top-level types), the ``before_tool_call`` policy, a timeout, and a
size cap on the result. Whatever goes wrong becomes an error *result* the model reads; a tool never
breaks the turn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librefang_providers.api import ToolDefinition, ToolResultBlock, ToolUseBlock

log = logging.getLogger("librefang.runtime.tools")

TOOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}


class ToolError(Exception):
    """Raised by a tool handler: the message is shown to the model as an error result."""


@dataclass
class ToolContext:
    """What a tool handler knows about the call it serves."""

    kernel: Any
    agent_id: str
    agent_name: str
    session_id: str
    workspace: Path | None  # None for a call made without an agent (``POST /api/tools/{name}/invoke``)
    call_id: str = ""
    tool_name: str = ""


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[str] | str]


@dataclass
class Tool:
    """A tool: its model-facing definition and the handler that runs it.

    ``handler(input, context)`` returns the result text (may be ``async``); raising :class:`ToolError`
    makes an error result. ``timeout`` (seconds) overrides ``[runtime] tool_timeout_secs``.
    """

    name: str
    description: str
    handler: Handler
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout: float | None = None
    source: str = "builtin"
    owner: str = ""

    def definition(self) -> ToolDefinition:
        """The :class:`ToolDefinition` sent to the model."""
        return ToolDefinition(self.name, self.description, self.input_schema)

    def describe(self) -> dict[str, Any]:
        """JSON shape for listings (``name, description, input_schema, source``)."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "source": self.source}


@dataclass
class Deny:
    """What a ``before_tool_call`` implementation returns to refuse a call; ``reason`` reaches the model."""

    reason: str
    status: str = "denied"


@dataclass
class ToolOutcome:
    """One executed (or refused) call."""

    result: ToolResultBlock
    status: str  # completed | error | denied | blocked | timeout
    execution_ms: float = 0.0
    truncated: bool = False


Policy = Callable[[ToolUseBlock, ToolContext], Awaitable[Deny | None]]


class ToolRegistry:
    """Every tool of the daemon by name; duplicates are refused."""

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}

    def register(self, tool: Tool, *, owner: str = "") -> None:
        """Add ``tool``; ``ValueError`` for a bad name or schema, or a name already taken."""
        if not isinstance(tool, Tool):
            raise ValueError(f"register_tools expects a librefang_runtime.api.Tool, got {type(tool).__name__}")
        if not TOOL_NAME.match(tool.name):
            raise ValueError(f"tool name {tool.name!r} must match {TOOL_NAME.pattern}")
        if not callable(tool.handler):
            raise ValueError(f"tool {tool.name!r} has no callable handler")
        schema = tool.input_schema
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise ValueError(f"tool {tool.name!r}: input_schema must be a JSON Schema object (type: object)")
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is already registered by {self.tools[tool.name].owner or 'another plugin'}")
        tool.owner = owner or tool.owner
        self.tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def names(self) -> list[str]:
        return sorted(self.tools)

    def definitions(self, names: list[str]) -> list[ToolDefinition]:
        """Definitions of the tools in ``names`` (unknown names skipped), in that order."""
        return [self.tools[n].definition() for n in names if n in self.tools]


def check_input(schema: dict[str, Any], value: Any) -> str | None:
    """A message naming what is wrong with ``value`` for ``schema`` (top level only), or None."""
    if not isinstance(value, dict):
        return "tool input must be a JSON object"
    for key in schema.get("required", []) or []:
        if key not in value:
            return f"missing required parameter {key!r}"
    properties = schema.get("properties") or {}
    for key, item in value.items():
        spec = properties.get(key)
        if not isinstance(spec, dict) or "type" not in spec:
            continue
        kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        allowed = tuple(t for k in kinds for t in JSON_TYPES.get(k, (object,)))
        # bool is an int in Python; JSON keeps them apart.
        if isinstance(item, bool) and "boolean" not in kinds:
            return f"parameter {key!r} must be {' or '.join(kinds)}"
        if not isinstance(item, allowed):
            return f"parameter {key!r} must be {' or '.join(kinds)}"
    return None


def cap(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text, False
    note = f"\n\n[truncated: the result was {len(text)} characters; only the first {limit} are shown]"
    return text[:limit] + note, True


async def execute(
    registry: ToolRegistry,
    call: ToolUseBlock,
    context: ToolContext,
    *,
    allowed: set[str],
    policy: Policy | None,
    time_limit: float,
    max_chars: int,
) -> ToolOutcome:
    """Run one tool call under the checks described in the module docstring."""
    started = time.perf_counter()

    def done(content: str, status: str, is_error: bool) -> ToolOutcome:
        text, truncated = cap(content, max_chars)
        return ToolOutcome(ToolResultBlock(call.id, text, is_error, call.name), status,
                           (time.perf_counter() - started) * 1000, truncated)

    tool = registry.get(call.name)
    if tool is None or call.name not in allowed:
        return done(f"unknown tool {call.name!r}; available tools: {', '.join(sorted(allowed)) or 'none'}",
                    "error", True)
    problem = check_input(tool.input_schema, call.input)
    if problem:
        return done(f"invalid input for {call.name}: {problem}", "error", True)
    context = ToolContext(**{**context.__dict__, "call_id": call.id, "tool_name": call.name})
    if policy is not None:
        verdict = await policy(call, context)
        if verdict is not None:
            return done(f"the call to {call.name} was refused: {verdict.reason}", verdict.status, True)
    limit = tool.timeout if tool.timeout is not None else time_limit
    try:
        async with asyncio.timeout(limit):
            value = tool.handler(dict(call.input), context)
            if inspect.isawaitable(value):
                value = await value
    except TimeoutError:
        return done(f"{call.name} did not finish within {limit:g} seconds", "timeout", True)
    except ToolError as exc:
        return done(str(exc), "error", True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a broken tool is the model's problem to route around, not a crash
        log.warning("tool %s failed: %s: %s", call.name, type(exc).__name__, exc)
        return done(f"{call.name} failed: {type(exc).__name__}", "error", True)
    return done(value if isinstance(value, str) else str(value), "completed", False)

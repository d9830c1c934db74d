"""What other plugins may import from the runtime plugin.

Add tools with the ``register_tools`` hook::

    from librefang_runtime.api import Tool

    @librefang.hookimpl
    def register_tools(register):
        register(Tool("echo", "Repeat the input.", lambda data, ctx: data["text"],
                      {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))

Refuse calls with ``before_tool_call`` returning :class:`Deny`. Events on ``kernel.bus``:
``runtime.turn_completed`` (agent_id, name, session_id, provider, model, token counts, cost_usd,
iterations) after every turn.
"""

from __future__ import annotations

from typing import Any

from librefang_runtime.history import repair, trim
from librefang_runtime.loop import AgentLoop, LoopSettings, MaxIterationsExceeded, TurnResult
from librefang_runtime.service import RuntimeService
from librefang_runtime.tools import Deny, Tool, ToolContext, ToolError, ToolRegistry

EVENTS = ("runtime.turn_completed",)

__all__ = [
    "EVENTS", "AgentLoop", "Deny", "LoopSettings", "MaxIterationsExceeded", "RuntimeService", "Tool",
    "ToolContext", "ToolError", "ToolRegistry", "TurnResult", "repair", "runtime", "trim",
]


def runtime(kernel: Any) -> RuntimeService:
    """The runtime of a started kernel (``KeyError`` when the runtime plugin is not running)."""
    return kernel.services["runtime"]

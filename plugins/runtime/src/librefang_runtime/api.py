"""What other plugins may import from the runtime plugin.

Add tools with the ``register_tools`` hook::

    from librefang_runtime.api import Tool

    @librefang.hookimpl
    def register_tools(register):
        register(Tool("echo", "Repeat the input.", lambda data, ctx: data["text"],
                      {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}))

Answer agents whose manifest says ``module = "<scheme>:<target>"`` with ``register_agent_modules``::

    @librefang.hookimpl
    def register_agent_modules(register):
        register("wasm", run_wasm_turn)   # async (ModuleRequest) -> str | ModuleReply; raise ModuleError

Send a message to an agent from another plugin (a channel adapter, a scheduler) with
:func:`send_message`. Refuse calls with ``before_tool_call`` returning :class:`Deny`. Events on ``kernel.bus``:
``runtime.turn_completed`` (agent_id, name, session_id, provider, model, token counts, cost_usd,
iterations) after every turn.
"""

from __future__ import annotations

from typing import Any

from librefang_runtime.history import repair, trim
from librefang_runtime.loop import AgentLoop, Emit, LoopSettings, MaxIterationsExceeded, TurnResult
from librefang_runtime.modules import ModuleError, ModuleReply, ModuleRequest
from librefang_runtime.schemas import MessageRequest
from librefang_runtime.service import RuntimeService
from librefang_runtime.tools import Deny, Tool, ToolContext, ToolError, ToolRegistry

EVENTS = ("runtime.turn_completed",)

__all__ = [
    "EVENTS", "AgentLoop", "Deny", "LoopSettings", "MaxIterationsExceeded", "MessageRequest", "ModuleError",
    "ModuleReply", "ModuleRequest", "RuntimeService",
    "Tool", "ToolContext", "ToolError", "ToolRegistry", "TurnResult", "repair", "runtime", "send_message", "trim",
]


def runtime(kernel: Any) -> RuntimeService:
    """The runtime of a started kernel (``KeyError`` when the runtime plugin is not running)."""
    return kernel.services["runtime"]


async def send_message(kernel: Any, agent_id: str, text: str, *, session_id: str | None = None,
                       sender_name: str | None = None, is_group: bool = False, emit: Emit | None = None,
                       attachments: list[str] | None = None) -> TurnResult:
    """Run one turn of an agent, exactly as ``POST /api/agents/{id}/message`` does (same checks, same
    session rules, one run at a time per session). Raises ``librefang.errors.ApiError`` subclasses
    (400/403/404/409/412/413, 502/503 for provider failures); ``emit`` receives the loop's events.
    ``attachments`` are upload ids of the agent (``librefang_agents.api.save_upload``): images and
    text files, as in ``MessageRequest.attachments`` (docs/runtime.md, "Attachments")."""
    service = runtime(kernel)
    body = MessageRequest(message=text, session_id=session_id, sender_name=sender_name, is_group=is_group,
                          attachments=[{"file_id": file_id} for file_id in attachments or []])
    return await service.run(await service.prepare(agent_id, body), emit)

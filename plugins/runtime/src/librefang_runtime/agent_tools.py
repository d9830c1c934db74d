"""Built-in tools that reach other agents: ``agent_list``, ``agent_send``, ``agent_spawn``.

``agent_send`` runs a turn of the target agent and returns its reply. The chain of agents in the
current call (a context variable) bounds the depth and refuses a cycle: an agent waiting for its own
session would never get it back. The target must match the sender's ``capabilities.agent_message``.
``agent_spawn`` creates a child whose capabilities never exceed the parent's (checked by the agents
plugin).
"""

from __future__ import annotations

import contextvars
from fnmatch import fnmatchcase
from typing import Any

from librefang.errors import ApiError
from librefang_agents import api as agents_api

from librefang_runtime.tools import Tool, ToolContext, ToolError

MAX_DEPTH = 4
MAX_LISTED = 100
# The agent ids of the turns this call is nested in (outermost first).
CALL_CHAIN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("librefang_agent_chain", default=())


def _runtime(context: ToolContext) -> Any:
    return context.kernel.services["runtime"]


async def _agent_list(data: dict[str, Any], context: ToolContext) -> str:
    page = await agents_api.registry(context.kernel).list(limit=MAX_LISTED)
    lines = []
    for item in page["items"]:
        marker = " (you)" if item["id"] == context.agent_id else ""
        description = " ".join((item.get("description") or "").split())[:160]
        lines.append(f"- {item['name']}{marker} [{item['state']}] id={item['id']}" + (f": {description}" if description else ""))
    more = f"\n({page['total'] - len(lines)} more not shown)" if page["total"] > len(lines) else ""
    return ("\n".join(lines) or "(no agents)") + more


async def _target(context: ToolContext, ref: str) -> Any:
    registry = agents_api.registry(context.kernel)
    try:
        return await registry.get(ref)
    except ApiError:
        found = await registry.find(ref)
        if found is None:
            raise ToolError(f"no agent called or with id {ref[:100]!r}") from None
        return found


async def _agent_send(data: dict[str, Any], context: ToolContext) -> str:
    if not context.agent_id:
        raise ToolError("agent_send is only available to agents")
    sender = await agents_api.registry(context.kernel).get(context.agent_id)
    target = await _target(context, data["agent"])
    allowed = agents_api.effective_capabilities(sender.parsed()).agent_message
    if not any(fnmatchcase(target.name, p) or fnmatchcase(target.id, p) for p in allowed):
        raise ToolError(f"you may not message {target.name!r} (capabilities.agent_message)")
    chain = CALL_CHAIN.get() or (context.agent_id,)
    if target.id in chain:
        raise ToolError(f"{target.name!r} is already waiting in this conversation (a message cycle)")
    if len(chain) > MAX_DEPTH:
        raise ToolError(f"agent calls may nest at most {MAX_DEPTH} deep")
    from librefang_runtime.schemas import MessageRequest

    runtime = _runtime(context)
    token = CALL_CHAIN.set((*chain, target.id))
    try:
        turn = await runtime.prepare(target.id, MessageRequest(message=data["message"]))
        result = await runtime.run(turn)
    except ApiError as exc:
        raise ToolError(f"{target.name} could not answer: {exc.message}") from None
    finally:
        CALL_CHAIN.reset(token)
    return result.response if not result.silent else f"({target.name} chose not to reply)"


async def _agent_spawn(data: dict[str, Any], context: ToolContext) -> str:
    if not context.agent_id:
        raise ToolError("agent_spawn is only available to agents")
    registry = agents_api.registry(context.kernel)
    try:
        child = await registry.spawn_request(manifest_toml=data["manifest_toml"], parent_id=context.agent_id)
    except ApiError as exc:
        raise ToolError(f"spawn refused: {exc.message}") from None
    return f"Spawned agent {child.name!r} (id {child.id})"


def agent_tools() -> list[Tool]:
    """The agent-to-agent tools."""
    return [
        Tool("agent_list", "List the agents of this daemon (name, state, id, description).", _agent_list,
             {"type": "object", "properties": {}}),
        Tool("agent_send", "Send a message to another agent and get its reply.", _agent_send,
             {"type": "object", "properties": {
                 "agent": {"type": "string", "description": "The agent's name or id"},
                 "message": {"type": "string"}}, "required": ["agent", "message"]},
             timeout=600),
        Tool("agent_spawn", "Create a new child agent from a TOML manifest (it can never have more "
             "capabilities than you).", _agent_spawn,
             {"type": "object", "properties": {"manifest_toml": {"type": "string"}}, "required": ["manifest_toml"]},
             timeout=600),
    ]

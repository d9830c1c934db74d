"""HTTP routes for tools: list, describe, and invoke one directly (fail-closed, audited)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import BadRequest, Forbidden, NotFound
from librefang_agents import api as agents_api
from librefang_providers.api import ToolUseBlock
from pydantic import BaseModel, ConfigDict, Field, RootModel
from quart import Response, g

from librefang_runtime.service import RuntimeService
from librefang_runtime.tools import ToolContext, execute

router = Router("runtime_tools", tags=("tools",))


class ToolInfo(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    source: str


class ToolList(BaseModel):
    tools: list[ToolInfo]
    total: int


class InvokeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(None, max_length=64)


class ToolInput(RootModel[dict[str, Any]]):
    """The tool's input: a JSON object matching its ``input_schema``."""


class ToolResultView(BaseModel):
    tool_use_id: str
    tool_name: str
    content: str
    is_error: bool
    status: str


def service() -> RuntimeService:
    return current_kernel().services["runtime"]


@router.get("/api/tools", cost=1, response=ToolList)
async def list_tools() -> ToolList:
    """Every tool of the daemon (built-in and added by plugins)."""
    tools = service().tools
    items = [ToolInfo(**tools.tools[name].describe()) for name in tools.names()]
    return ToolList(tools=items, total=len(items))


@router.get("/api/tools/<name>", cost=1, response=ToolInfo)
async def get_tool(name: str) -> ToolInfo:
    """One tool's definition."""
    tool = service().tools.get(name)
    if tool is None:
        raise NotFound(f"unknown tool {name[:128]!r}", code="tool_not_found")
    return ToolInfo(**tool.describe())


@router.post("/api/tools/<name>/invoke", cost=20, body=ToolInput, query=InvokeQuery, response=ToolResultView)
async def invoke_tool(name: str, body: ToolInput, query: InvokeQuery) -> Response:
    """Run one tool directly. Refused (403) unless ``[tool_invoke] enabled`` and the name matches an
    ``allowlist`` glob; with ``?agent_id=`` it runs as that agent (its workspace, its visible tools).
    200 with the result, or 400 when the result is an error. Every call is audited."""
    kernel = current_kernel()
    runtime = service()
    settings = kernel.config.section("tool_invoke")
    if not settings.enabled:
        raise Forbidden("direct tool invocation is disabled: set [tool_invoke] enabled = true", code="tool_invoke_disabled")
    if not any(fnmatchcase(name, pattern) for pattern in settings.allowlist):
        raise Forbidden(f"tool {name[:128]!r} is not in [tool_invoke] allowlist", code="tool_not_allowed")
    tool = runtime.tools.get(name)
    if tool is None:
        raise NotFound(f"unknown tool {name[:128]!r}", code="tool_not_found")
    if query.agent_id:
        record = await runtime.agents.get(query.agent_id)
        allowed = agents_api.visible_tools(record.parsed(), record.mode, runtime.tools.names())
        if name not in allowed:
            raise Forbidden(f"agent {record.name!r} may not use {name!r}", code="tool_not_permitted")
        context = ToolContext(kernel=kernel, agent_id=record.id, agent_name=record.name,
                              session_id=record.session_id, workspace=agents_api.workspace_of(kernel, record))
        actor_target = record.id
    else:
        context = ToolContext(kernel=kernel, agent_id="", agent_name="", session_id="", workspace=None)
        actor_target = "rest-api:anonymous"
    if not isinstance(body.root, dict):
        raise BadRequest("the body must be the tool's input as a JSON object", code="invalid_body")
    call = ToolUseBlock(f"invoke-{getattr(g, 'request_id', '')}", name, body.root)
    outcome = await execute(runtime.tools, call, context, allowed={name}, policy=runtime.policy,
                            time_limit=runtime.config.tool_timeout_secs, max_chars=runtime.config.max_tool_result_chars)
    await kernel.audit.record("ToolInvoke", actor=str(getattr(g, "principal", None) or "api"), target=actor_target,
                              detail=name, outcome="error" if outcome.result.is_error else "ok",
                              request_id=getattr(g, "request_id", "") or "")
    view = ToolResultView(tool_use_id=call.id, tool_name=name, content=outcome.result.content,
                          is_error=outcome.result.is_error, status=outcome.status)
    return Response(view.model_dump_json(), status=400 if outcome.result.is_error else 200,
                    mimetype="application/json")

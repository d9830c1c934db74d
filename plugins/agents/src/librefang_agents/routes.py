"""HTTP routes of the agent registry: thin handlers over :class:`~librefang_agents.service.AgentService`."""

from __future__ import annotations

import asyncio
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import ApiError, BadRequest
from quart import Response, g

from librefang_agents.api import set_model as switch_model
from librefang_agents.manifest import ManifestError, check_agent_name, parse_manifest
from librefang_agents.schemas import (
    AgentChanged,
    AgentDetail,
    AgentList,
    AgentListQuery,
    BulkCreateRequest,
    BulkIdsRequest,
    BulkItem,
    BulkResult,
    CloneRequest,
    IdentityRequest,
    KillQuery,
    KillResponse,
    McpServersView,
    ModeChanged,
    ModelChanged,
    NameList,
    PatchAgentRequest,
    PatchConfigRequest,
    SetModelRequest,
    SetModeRequest,
    SetToolsRequest,
    SkillsView,
    SpawnRequest,
    SpawnResponse,
    StateChanged,
    ToolsView,
    UpdateAgentRequest,
)
from librefang_agents.service import Actor, AgentService, manifest_error
from librefang_agents.views import list_mode

router = Router("agents", tags=("agents",))


def service() -> AgentService:
    return current_kernel().services["agents"]


def actor() -> Actor:
    return Actor(name=str(getattr(g, "principal", None) or "api"), request_id=getattr(g, "request_id", "") or "")


def changed(record: Any) -> AgentChanged:
    return AgentChanged(status="updated", agent_id=record.id, name=record.name)


# -- collection ----------------------------------------------------------------------------------------
@router.get("/api/agents", cost=2, query=AgentListQuery, response=AgentList)
async def list_agents(query: AgentListQuery) -> Response:
    """List agents: filter (q, status), sort (name, created_at, last_active, state), paginate."""
    body = await service().list_json(
        q=query.q, status=query.status, sort=query.sort, order=query.order, limit=query.limit, offset=query.offset
    )
    return Response(body, status=200, mimetype="application/json")


@router.post("/api/agents", cost=50, body=SpawnRequest, response=SpawnResponse, status=201, idempotent=True)
async def spawn_agent(body: SpawnRequest) -> SpawnResponse:
    """Spawn an agent from manifest_toml, a template, or a signed manifest."""
    record = await service().spawn_request(
        manifest_toml=body.manifest_toml, template=body.template, name=body.name,
        signed_manifest=body.signed_manifest, actor=actor(),
    )
    return SpawnResponse(agent_id=record.id, name=record.name)


def _bulk_result(items: list[BulkItem]) -> BulkResult:
    ok = sum(1 for i in items if i.success)
    return BulkResult(total=len(items), succeeded=ok, failed=len(items) - ok, results=items)


@router.post("/api/agents/bulk", cost=100, body=BulkCreateRequest, response=BulkResult, idempotent=True)
async def bulk_create_agents(body: BulkCreateRequest) -> BulkResult:
    """Spawn up to 50 agents (concurrently, so their rows share commits); each gets its own result."""
    svc, who = service(), actor()

    async def one(index: int, req: Any) -> BulkItem:
        try:
            record = await svc.spawn_request(
                manifest_toml=req.manifest_toml, template=req.template, name=req.name,
                signed_manifest=req.signed_manifest, actor=who,
            )
            return BulkItem(index=index, success=True, agent_id=record.id, name=record.name, status="created")
        except ApiError as exc:
            return BulkItem(index=index, success=False, error=exc.message, code=exc.code)

    items = await asyncio.gather(*(one(i, req) for i, req in enumerate(body.agents)))
    return _bulk_result(list(items))


async def _bulk(agent_ids: list[str], action: Any) -> BulkResult:
    items = []
    for index, agent_id in enumerate(agent_ids):
        try:
            status, record_id, name = await action(agent_id)
            items.append(BulkItem(index=index, success=True, agent_id=record_id, name=name, status=status))
        except ApiError as exc:
            items.append(BulkItem(index=index, success=False, agent_id=agent_id, error=exc.message, code=exc.code))
    return _bulk_result(items)


@router.delete("/api/agents/bulk", cost=50, body=BulkIdsRequest, response=BulkResult)
async def bulk_delete_agents(body: BulkIdsRequest) -> BulkResult:
    """Kill up to 50 agents; each gets its own result."""
    svc, who = service(), actor()

    async def kill(agent_id: str) -> tuple[str, str, str | None]:
        result = await svc.kill(agent_id, actor=who)
        return result["status"], result["agent_id"], result.get("name")

    return await _bulk(body.agent_ids, kill)


def _bulk_state(state: str, status: str) -> Any:
    async def handler(body: BulkIdsRequest) -> BulkResult:
        svc, who = service(), actor()

        async def change(agent_id: str) -> tuple[str, str, str]:
            record = await svc.set_state(agent_id, state, actor=who)
            return status, record.id, record.name

        return await _bulk(body.agent_ids, change)

    return handler


async def bulk_start_agents(body: BulkIdsRequest) -> BulkResult:
    """Start (resume) up to 50 agents."""
    return await _bulk_state("Running", "running")(body)


async def bulk_stop_agents(body: BulkIdsRequest) -> BulkResult:
    """Stop (suspend) up to 50 agents."""
    return await _bulk_state("Suspended", "suspended")(body)


router.post("/api/agents/bulk/start", cost=20, body=BulkIdsRequest, response=BulkResult)(bulk_start_agents)
router.post("/api/agents/bulk/stop", cost=20, body=BulkIdsRequest, response=BulkResult)(bulk_stop_agents)


# -- one agent -----------------------------------------------------------------------------------------
@router.get("/api/agents/<agent_id>", cost=1, response=AgentDetail)
async def get_agent(agent_id: str) -> dict[str, Any]:
    """One agent: state, mode, resolved model, capabilities, lists and the manifest."""
    return await service().describe(agent_id)


@router.delete("/api/agents/<agent_id>", cost=5, query=KillQuery, response=KillResponse)
async def kill_agent(agent_id: str, query: KillQuery) -> dict[str, Any]:
    """Kill an agent; repeating it answers 200 already-deleted."""
    return await service().kill(agent_id, actor=actor())


def _replace_with(text: str) -> Any:
    try:
        new = parse_manifest(text).to_data()
    except ManifestError as exc:
        raise manifest_error(exc) from None

    def mutate(data: dict[str, Any]) -> None:
        keep_name = data.get("name")
        data.clear()
        data.update(new)
        if "name" not in new and keep_name:
            data["name"] = keep_name

    return mutate


@router.patch("/api/agents/<agent_id>", cost=10, body=PatchAgentRequest, response=AgentChanged)
async def patch_agent(agent_id: str, body: PatchAgentRequest) -> AgentChanged:
    """Partial update: name, description, tags, schedule, ... or a whole manifest_toml."""
    svc = service()
    fields = body.model_dump(exclude_unset=True, exclude={"manifest_toml"})
    if fields.get("name", "") is None:
        del fields["name"]  # an agent always has a name
    replace = None
    signer = None
    if body.manifest_toml is not None:
        text, signer = svc.manifest_text(body.manifest_toml, None)
        replace = _replace_with(text)
    if not fields and replace is None:
        raise BadRequest("nothing to change: give at least one field", code="invalid_request")

    def mutate(data: dict[str, Any]) -> None:
        if replace is not None:
            replace(data)
        for key, value in fields.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    record = await svc.change(agent_id, mutate, actor=actor(), what="patch", signer=signer)
    return changed(record)


@router.put("/api/agents/<agent_id>/update", cost=10, body=UpdateAgentRequest, response=AgentChanged)
async def update_agent(agent_id: str, body: UpdateAgentRequest) -> AgentChanged:
    """Replace the whole manifest (optionally signed); id, state and mode are kept."""
    svc = service()
    text, signer = svc.manifest_text(body.manifest_toml, body.signed_manifest)
    if not text.strip():
        raise BadRequest("give manifest_toml or signed_manifest", code="invalid_request")
    record = await svc.change(agent_id, _replace_with(text), actor=actor(), what="update", signer=signer)
    return changed(record)


@router.put("/api/agents/<agent_id>/mode", cost=5, body=SetModeRequest, response=ModeChanged)
async def set_agent_mode(agent_id: str, body: SetModeRequest) -> ModeChanged:
    """Set the permission mode: observe (no tools), assist (read-only tools), full."""
    record = await service().set_mode(agent_id, body.mode.strip().lower(), actor=actor())
    return ModeChanged(status="updated", mode=record.mode, agent_id=record.id)


@router.put("/api/agents/<agent_id>/suspend", cost=5, response=StateChanged)
async def suspend_agent(agent_id: str) -> StateChanged:
    """Suspend an agent (kept in the registry, takes no work)."""
    record = await service().set_state(agent_id, "Suspended", actor=actor())
    return StateChanged(status="suspended", agent_id=record.id)


@router.put("/api/agents/<agent_id>/resume", cost=5, response=StateChanged)
async def resume_agent(agent_id: str) -> StateChanged:
    """Resume a suspended agent."""
    record = await service().set_state(agent_id, "Running", actor=actor())
    return StateChanged(status="running", agent_id=record.id)


@router.patch("/api/agents/<agent_id>/identity", cost=5, body=IdentityRequest, response=AgentChanged)
async def update_agent_identity(agent_id: str, body: IdentityRequest) -> AgentChanged:
    """Merge into the visual identity (null keeps a value, "" clears it)."""
    fields = {k: v for k, v in body.model_dump().items() if v is not None}
    if not fields:
        raise BadRequest("nothing to change: give at least one identity field", code="invalid_request")

    def mutate(data: dict[str, Any]) -> None:
        data["identity"] = {**dict(data.get("identity") or {}), **fields}

    record = await service().change(agent_id, mutate, actor=actor(), what="identity")
    return changed(record)


_IDENTITY_KEYS = ("emoji", "avatar_url", "color", "archetype", "vibe", "greeting_style")
_MODEL_KEYS = ("provider", "model", "api_key_env", "base_url", "max_tokens", "temperature", "system_prompt")


@router.patch("/api/agents/<agent_id>/config", cost=10, body=PatchConfigRequest, response=AgentChanged)
async def patch_agent_config(agent_id: str, body: PatchConfigRequest) -> AgentChanged:
    """Change name, description, prompt, identity, model settings and fallbacks in one call."""
    fields = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    if not fields:
        raise BadRequest("nothing to change: give at least one field", code="invalid_request")

    def mutate(data: dict[str, Any]) -> None:
        model = dict(data.get("model") or {})
        identity = dict(data.get("identity") or {})
        for key, value in fields.items():
            if key in _MODEL_KEYS:
                model[key] = value
            elif key in _IDENTITY_KEYS:
                identity[key] = value
            else:
                data[key] = value
        if model:
            data["model"] = model
        if identity:
            data["identity"] = identity

    record = await service().change(agent_id, mutate, actor=actor(), what="config:" + ",".join(sorted(fields)))
    return changed(record)


@router.post("/api/agents/<agent_id>/clone", cost=50, body=CloneRequest, response=AgentChanged, status=201,
             idempotent=True)
async def clone_agent(agent_id: str, body: CloneRequest) -> AgentChanged:
    """A copy of the agent (manifest, identity, workspace files) under a new name."""
    try:
        check_agent_name(body.new_name)
    except ValueError as exc:
        raise BadRequest(f"new_name: {exc}", code="invalid_name") from None
    record = await service().clone(
        agent_id, body.new_name, include_skills=body.include_skills, include_tools=body.include_tools, actor=actor()
    )
    return AgentChanged(status="cloned", agent_id=record.id, name=record.name)


@router.put("/api/agents/<agent_id>/model", cost=5, body=SetModelRequest, response=ModelChanged)
async def set_model(agent_id: str, body: SetModelRequest) -> ModelChanged:
    """Switch the agent's model (and optionally provider)."""
    record = await switch_model(current_kernel(), agent_id, body.model, body.provider, actor=actor())
    manifest = record.parsed()
    return ModelChanged(status="updated", agent_id=record.id, provider=manifest.model.provider, model=manifest.model.model)


# -- tools, skills, MCP servers --------------------------------------------------------------------------
def _tools_view(record: Any) -> ToolsView:
    from librefang_agents.capabilities import visible_tools

    manifest = record.parsed()
    return ToolsView(
        agent_id=record.id,
        profile=manifest.profile,
        mode=record.mode,
        capabilities_tools=list(manifest.capabilities.tools),
        tool_allowlist=list(manifest.tool_allowlist),
        tool_blocklist=list(manifest.tool_blocklist),
        tools_disabled=manifest.tools_disabled,
        effective_tools=visible_tools(manifest, record.mode),
    )


@router.get("/api/agents/<agent_id>/tools", cost=1, response=ToolsView)
async def get_agent_tools(agent_id: str) -> ToolsView:
    """Declared tools, allow and block lists, and the tools the agent can use now."""
    return _tools_view(await service().get(agent_id))


@router.put("/api/agents/<agent_id>/tools", cost=5, body=SetToolsRequest, response=ToolsView)
async def set_agent_tools(agent_id: str, body: SetToolsRequest) -> ToolsView:
    """Change declared tools and the allow/block lists (null = unchanged)."""
    fields = body.model_dump(exclude_unset=True)
    if not any(v is not None for v in fields.values()):
        raise BadRequest("nothing to change: give at least one field", code="invalid_request")

    def mutate(data: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value is None:
                continue
            if key == "capabilities_tools":
                data["capabilities"] = {**dict(data.get("capabilities") or {}), "tools": value}
            else:
                data[key] = value

    return _tools_view(await service().change(agent_id, mutate, actor=actor(), what="tools"))


def _skills_view(record: Any) -> SkillsView:
    m = record.parsed()
    return SkillsView(agent_id=record.id, skills=list(m.skills), skills_mode=list_mode(m.skills, m.skills_disabled),
                      skills_disabled=m.skills_disabled)


def _mcp_view(record: Any) -> McpServersView:
    m = record.parsed()
    return McpServersView(agent_id=record.id, mcp_servers=list(m.mcp_servers),
                          mcp_servers_mode=list_mode(m.mcp_servers, m.mcp_disabled), mcp_disabled=m.mcp_disabled)


@router.get("/api/agents/<agent_id>/skills", cost=1, response=SkillsView)
async def get_agent_skills(agent_id: str) -> SkillsView:
    """The agent's skill allow list ([] = all skills)."""
    return _skills_view(await service().get(agent_id))


@router.put("/api/agents/<agent_id>/skills", cost=5, body=NameList, response=SkillsView)
async def set_agent_skills(agent_id: str, body: NameList) -> SkillsView:
    """Replace the skill allow list (a JSON array of names; [] = all skills)."""
    names = list(body.root)

    def mutate(data: dict[str, Any]) -> None:
        data["skills"] = names

    return _skills_view(await service().change(agent_id, mutate, actor=actor(), what="skills"))


@router.get("/api/agents/<agent_id>/mcp_servers", cost=1, response=McpServersView)
async def get_agent_mcp_servers(agent_id: str) -> McpServersView:
    """The agent's MCP server allow list ([] or ["*"] = all connected servers)."""
    return _mcp_view(await service().get(agent_id))


@router.put("/api/agents/<agent_id>/mcp_servers", cost=5, body=NameList, response=McpServersView)
async def set_agent_mcp_servers(agent_id: str, body: NameList) -> McpServersView:
    """Replace the MCP server allow list (a JSON array of server names)."""
    names = list(body.root)

    def mutate(data: dict[str, Any]) -> None:
        data["mcp_servers"] = names

    return _mcp_view(await service().change(agent_id, mutate, actor=actor(), what="mcp_servers"))

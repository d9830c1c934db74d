"""Request and response models of the agents API (they feed ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from librefang_agents.manifest import MAX_LIST, TOOL_PATTERN

MAX_BULK = 50


class DeferredModel(BaseModel):
    """Base of this module's request and response models: pydantic builds each model's validator and
    serializer on first use (``defer_build``), not when the daemon starts and imports this module."""

    model_config = ConfigDict(defer_build=True)


class Strict(DeferredModel):
    model_config = ConfigDict(extra="forbid")


class SpawnRequest(Strict):
    """Spawn an agent from a TOML manifest, a template, or an Ed25519-signed envelope."""

    manifest_toml: str | None = Field(None, description="Agent manifest as TOML (optional with template)")
    template: str | None = Field(None, max_length=64, description="Template name (bundled or LIBREFANG_HOME/templates)")
    name: str | None = Field(None, max_length=64, description="Overrides the manifest's name")
    signed_manifest: str | dict[str, Any] | None = Field(
        None, description="Signed envelope {manifest, content_hash, signature, signer_public_key} (JSON text or object)"
    )


class SpawnResponse(DeferredModel):
    agent_id: str
    name: str


class Identity(DeferredModel):
    emoji: str | None = None
    avatar_url: str | None = None
    color: str | None = None


class AgentSummary(DeferredModel):
    id: str
    name: str
    description: str
    author: str
    is_hand: bool
    state: str
    mode: str
    ready: bool
    created_at: str
    last_active: str
    model_provider: str
    model_name: str
    profile: str | None
    schedule: str
    tags: list[str]
    identity: Identity
    parent_agent_id: str | None
    children: list[str]
    session_id: str


class AgentList(DeferredModel):
    items: list[AgentSummary]
    total: int
    offset: int
    limit: int


class AgentListQuery(Strict):
    q: str | None = Field(None, max_length=200, description="Substring of name or description (case-insensitive)")
    status: str | None = Field(None, max_length=20, description="State: created, running, suspended, terminated, crashed")
    sort: str = Field("name", max_length=20, description="name | created_at | last_active | state")
    order: str = Field("asc", max_length=4, description="asc | desc")
    limit: int | None = Field(None, ge=0, description="Page size (default [agents] default_list_limit, at most 500)")
    offset: int = Field(0, ge=0, le=10_000_000)


class AgentDetail(DeferredModel, extra="allow"):
    id: str
    name: str
    state: str
    mode: str
    model: dict[str, Any]
    capabilities: dict[str, Any]
    manifest: dict[str, Any]


class KillQuery(Strict):
    confirm: bool | None = Field(None, description="Accepted for compatibility; a kill needs no confirmation")


class KillResponse(DeferredModel):
    status: str
    agent_id: str
    name: str | None = None


class PatchAgentRequest(Strict):
    """Partial update: plain fields, or a whole ``manifest_toml`` (applied first)."""

    manifest_toml: str | None = None
    name: str | None = Field(None, max_length=64)
    description: str | None = Field(None, max_length=65536)
    author: str | None = Field(None, max_length=200)
    tags: list[str] | None = Field(None, max_length=MAX_LIST)
    schedule: str | dict[str, Any] | None = None
    session_mode: str | None = None
    profile: str | None = None
    priority: str | None = None
    enabled: bool | None = None
    web_search_augmentation: str | None = None


class UpdateAgentRequest(Strict):
    """Replace the whole manifest (the agent keeps its id, state and mode)."""

    manifest_toml: str | None = None
    signed_manifest: str | dict[str, Any] | None = None


class AgentChanged(DeferredModel):
    status: str
    agent_id: str
    name: str


class SetModeRequest(Strict):
    mode: str = Field(..., max_length=20, description="observe | assist | full")


class ModeChanged(DeferredModel):
    status: str
    mode: str
    agent_id: str


class StateChanged(DeferredModel):
    status: str
    agent_id: str


class IdentityRequest(Strict):
    """Merge into the identity: an omitted or null field keeps its value; "" stores ""."""

    emoji: str | None = None
    avatar_url: str | None = None
    color: str | None = None
    archetype: str | None = None
    vibe: str | None = None
    greeting_style: str | None = None


class PatchConfigRequest(Strict):
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    system_prompt: str | None = None
    emoji: str | None = None
    avatar_url: str | None = None
    color: str | None = None
    archetype: str | None = None
    vibe: str | None = None
    greeting_style: str | None = None
    provider: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    base_url: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    fallback_models: list[dict[str, Any]] | None = Field(None, max_length=20)
    web_search_augmentation: str | None = None


class CloneRequest(Strict):
    new_name: str = Field(..., max_length=64)
    include_skills: bool = True
    include_tools: bool = True


class SetModelRequest(Strict):
    model: str = Field(..., min_length=1, max_length=200)
    provider: str | None = Field(None, min_length=1, max_length=100)


class ModelChanged(DeferredModel):
    status: str
    agent_id: str
    provider: str
    model: str


def _patterns(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    if len(values) > MAX_LIST:
        raise ValueError(f"at most {MAX_LIST} entries")
    for value in values:
        if not TOOL_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid tool name or pattern")
    return values


class SetToolsRequest(Strict):
    """``null`` = no change; ``[]`` for capabilities_tools means unrestricted, for the lists: clear."""

    capabilities_tools: list[str] | None = None
    tool_allowlist: list[str] | None = None
    tool_blocklist: list[str] | None = None
    tools_disabled: bool | None = None

    _check = field_validator("capabilities_tools", "tool_allowlist", "tool_blocklist")(_patterns)


class ToolsView(DeferredModel):
    agent_id: str
    profile: str | None
    mode: str
    capabilities_tools: list[str]
    tool_allowlist: list[str]
    tool_blocklist: list[str]
    tools_disabled: bool
    effective_tools: list[str]


class NameList(RootModel[list[str]]):
    """A JSON array of names."""


class SkillsView(DeferredModel):
    agent_id: str
    skills: list[str]
    skills_mode: str
    skills_disabled: bool


class McpServersView(DeferredModel):
    agent_id: str
    mcp_servers: list[str]
    mcp_servers_mode: str
    mcp_disabled: bool


class BulkCreateRequest(Strict):
    agents: list[SpawnRequest] = Field(..., min_length=1, max_length=MAX_BULK)


class BulkIdsRequest(Strict):
    agent_ids: list[str] = Field(..., min_length=1, max_length=MAX_BULK)


class BulkItem(DeferredModel):
    index: int
    success: bool
    agent_id: str | None = None
    name: str | None = None
    status: str | None = None
    error: str | None = None
    code: str | None = None


class BulkResult(DeferredModel):
    total: int
    succeeded: int
    failed: int
    results: list[BulkItem]


class FileEntry(DeferredModel):
    name: str
    size: int
    modified: str


class FileList(DeferredModel):
    agent_id: str
    files: list[FileEntry]
    total: int
    truncated: bool


class FileContent(DeferredModel):
    agent_id: str
    name: str
    content: str
    encoding: Literal["utf-8", "base64"]
    size: int
    modified: str


class SetFileRequest(Strict):
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"


class FileWritten(DeferredModel):
    status: str
    agent_id: str
    name: str
    size: int


class FileDeleted(DeferredModel):
    status: str
    agent_id: str
    name: str


class UploadResponse(DeferredModel):
    file_id: str
    agent_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: str
    url: str


class TemplateSummary(DeferredModel, extra="allow"):
    name: str
    source: str
    description: str


class TemplateList(DeferredModel):
    templates: list[TemplateSummary]
    total: int


class TemplateDetail(TemplateSummary):
    manifest: dict[str, Any] | None


class Profile(DeferredModel):
    name: str
    description: str
    tools: list[str]
    capabilities: dict[str, Any]

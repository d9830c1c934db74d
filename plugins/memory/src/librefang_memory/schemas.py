"""Request and response models of the memory routes (they feed ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model, model_validator

from librefang_memory.config import ProactiveMemoryConfig

Level = Literal["user", "session", "agent"]
MAX_IDS = 100_000


class DeferredModel(BaseModel):
    """Base of this module's request and response models: pydantic builds each model's validator and
    serializer on first use (``defer_build``), not when the daemon starts and imports this module."""

    model_config = ConfigDict(defer_build=True)


class Strict(DeferredModel):
    model_config = ConfigDict(extra="forbid")


# -- KV ---------------------------------------------------------------------------------------------
class KvPut(DeferredModel):
    """``{"value": <json>}``; any other JSON body is taken as the value itself."""

    value: Any = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        if isinstance(data, dict) and set(data) == {"value"}:
            return data
        return {"value": data}


class KvPair(DeferredModel):
    key: str
    value: Any = None


class KvList(DeferredModel):
    kv_pairs: list[KvPair]


class KvStored(DeferredModel):
    status: str
    key: str
    version: int


class KvImport(Strict):
    kv: dict[str, Any]
    clear_existing: StrictBool = False
    agent_id: str | None = None  # accepted (an export carries it) and ignored: the path names the agent
    version: int | None = None


class KvExport(DeferredModel):
    agent_id: str
    version: int
    kv: dict[str, Any]


class KvImported(DeferredModel):
    status: str
    agent_id: str
    imported: int
    keys_imported: int
    cleared: bool


# -- proactive memory --------------------------------------------------------------------------------
class ListQuery(Strict):
    category: str | None = Field(None, max_length=64)
    level: str | None = None
    peer_id: str | None = Field(None, max_length=256)
    offset: int = Field(0, ge=0, le=10_000_000)
    limit: int = Field(10, ge=0, le=100)


class ChatMessage(DeferredModel):
    role: str = Field("user", max_length=32)
    content: str


class AddBody(Strict):
    """One memory from ``content``, or memories extracted from ``messages`` (user messages only)."""

    agent_id: str | None = None
    content: str | None = None
    messages: list[ChatMessage] | None = Field(None, max_length=1000)
    level: str | None = None
    category: str | None = Field(None, max_length=64)
    metadata: dict[str, Any] | None = None
    confidence: float = Field(1.0, ge=0.0, le=1.0)
    peer_id: str | None = Field(None, max_length=256)
    source: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _one_of(self) -> AddBody:
        if (self.content is None) == (self.messages is None):
            raise ValueError("give either content or messages")
        return self


class MemoryItem(DeferredModel):
    id: str
    content: str
    level: str
    category: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str
    confidence: float
    created_at: str
    updated_at: str
    accessed_at: str
    access_count: int
    agent_id: str
    peer_id: str | None = None
    score: float | None = None


class MemoryList(DeferredModel):
    memories: list[MemoryItem]
    total: int
    offset: int
    limit: int
    proactive_enabled: bool


class Added(DeferredModel):
    added: int
    updated: int = 0
    unchanged: int = 0
    memories: list[MemoryItem]


class SearchQuery(Strict):
    q: str = Field(min_length=1, max_length=2000)
    level: str | None = None
    limit: int = Field(10, ge=1, le=100)
    peer_id: str | None = Field(None, max_length=256)


class SearchResults(DeferredModel):
    query: str
    mode: str
    count: int
    memories: list[MemoryItem]


class UpdateBody(Strict):
    content: str | None = None
    category: str | None = Field(None, max_length=64)
    metadata: dict[str, Any] | None = None
    level: str | None = None
    confidence: float | None = Field(None, ge=0.0, le=1.0)


class BulkDelete(Strict):
    ids: list[str] = Field(max_length=MAX_IDS)


class CountQuery(Strict):
    level: str | None = None


class Triple(Strict):
    subject: str = Field(min_length=1, max_length=256)
    subject_type: str = Field("entity", min_length=1, max_length=64)
    relation: str = Field(min_length=1, max_length=64)
    object: str = Field(min_length=1, max_length=256)
    object_type: str = Field("entity", min_length=1, max_length=64)
    confidence: float = Field(1.0, ge=0.0, le=1.0)
    properties: dict[str, Any] | None = None


class RelationsBody(Strict):
    """``{"relations": [triple, …]}`` or a bare array of triples."""

    relations: list[Triple] = Field(min_length=1, max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return {"relations": data} if isinstance(data, list) else data


class RelationsQuery(Strict):
    source: str | None = Field(None, max_length=256)
    relation: str | None = Field(None, max_length=64)
    target: str | None = Field(None, max_length=256)
    limit: int = Field(100, ge=1, le=1000)


class ExportItem(Strict):
    content: str
    level: str = "session"
    category: str | None = Field(None, max_length=64)
    confidence: float = Field(1.0, ge=0.0, le=1.0)
    created_at: str | None = None
    updated_at: str | None = None
    metadata: dict[str, Any] | None = None
    peer_id: str | None = Field(None, max_length=256)
    source: str | None = Field(None, max_length=64)


class MemoryExport(DeferredModel):
    agent_id: str
    version: int
    memories: list[ExportItem]


class MemoryImport(Strict):
    memories: list[ExportItem] = Field(max_length=MAX_IDS)
    clear_existing: StrictBool = False
    agent_id: str | None = None
    version: int | None = None


# Every [proactive_memory] key, optional: what PATCH /api/memory/config accepts.
ConfigPatch = create_model(  # type: ignore[call-overload]
    "ConfigPatch",
    __config__=ConfigDict(extra="forbid"),
    **{name: (field.annotation | None, None) for name, field in ProactiveMemoryConfig.model_fields.items()},
)


class MemoryStats(DeferredModel):
    """``GET /api/memory/stats`` and ``GET /api/memory/agents/{id}/stats``."""

    total: int
    user_count: int
    session_count: int
    agent_count: int
    categories: dict[str, int]
    enabled: bool
    auto_memorize_enabled: bool
    auto_retrieve_enabled: bool
    llm_extraction: bool
    semantic_search: bool
    vector_backend: Literal["sqlite-vec", "pgvector", "in-process"] | None = Field(
        description="what ranks vectors (None: semantic search is off)")
    agent_id: str | None = Field(default=None, description="present for the per-agent figures")

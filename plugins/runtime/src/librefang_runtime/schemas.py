"""Request and response models of the runtime's routes (they feed ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DeferredModel(BaseModel):
    """Base of this module's request and response models: pydantic builds each model's validator and
    serializer on first use (``defer_build``), not when the daemon starts and imports this module."""

    model_config = ConfigDict(defer_build=True)


class AttachmentRef(DeferredModel):
    """A file uploaded through ``/api/agents/{id}/upload``."""

    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(max_length=200)
    filename: str = Field("", max_length=1024)
    content_type: str = Field("", max_length=200)


class MessageRequest(DeferredModel):
    """``POST /api/agents/{id}/message`` (and ``/message/stream``). Unknown fields are refused.

    The text limits (bytes and characters, ``[runtime]``) are checked by the handler, which answers
    413 ``message_too_large``.
    """

    model_config = ConfigDict(extra="forbid")

    message: str
    attachments: list[AttachmentRef] = Field(default_factory=list, max_length=20)
    session_id: str | None = Field(None, max_length=64)
    ephemeral: bool = False
    incognito: bool = False
    thinking: bool | None = None
    show_thinking: bool | None = None
    sender_id: str | None = Field(None, max_length=256)
    sender_name: str | None = Field(None, max_length=256)
    channel_type: str | None = Field(None, max_length=64)
    is_group: bool = False
    was_mentioned: bool = False


class MessageResponse(DeferredModel):
    """The reply of one turn. ``session_id`` is set only when the caller did not pin one; ``cost_usd``
    is null when the catalog does not price the model that served."""

    response: str
    input_tokens: int
    output_tokens: int
    iterations: int
    cost_usd: float | None = None
    decision_traces: list[dict[str, Any]] = Field(default_factory=list)
    memories_saved: list[str] = Field(default_factory=list)
    memories_used: list[str] = Field(default_factory=list)
    memory_conflicts: list[Any] = Field(default_factory=list)
    thinking: str | None = None
    owner_notice: str | None = None
    silent: bool = False
    session_id: str | None = None
    provider: str | None = None
    model: str | None = None


class SessionQuery(DeferredModel):
    """``GET /api/agents/{id}/session?session_id=`` (default: the agent's canonical session)."""

    model_config = ConfigDict(extra="forbid")

    session_id: str | None = Field(None, max_length=64)


class SessionTool(DeferredModel):
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    result: str | None = None
    is_error: bool = False
    running: bool = False
    expanded: bool = False


class SessionImage(DeferredModel):
    """An image of a message: ``url`` is ``/api/uploads/{file_id}`` for an attached upload (or a
    ``data:`` URI for an image imported inline)."""

    media_type: str
    url: str
    file_id: str | None = None


class SessionMessage(DeferredModel):
    """One message as the dashboard shows it: text, the images it attached, plus the tools an
    assistant message called."""

    role: str
    content: str
    tools: list[SessionTool] | None = None
    images: list[SessionImage] | None = None
    thinking: str | None = None
    timestamp: str | None = None


class SessionView(DeferredModel):
    """``GET /api/agents/{id}/session``."""

    session_id: str
    agent_id: str
    message_count: int
    context_window_tokens: int
    label: str | None = None
    compacted_summary: str | None = None
    messages: list[SessionMessage]


class StopResponse(DeferredModel):
    """``POST /api/agents/{id}/stop`` and ``…/sessions/{sid}/stop``."""

    status: str
    message: str
    stopped: bool


LABEL = r"^[^\x00-\x1f]{1,128}$"


class CreateSessionRequest(DeferredModel):
    """``POST /api/agents/{id}/sessions``."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, pattern=LABEL)


class LabelRequest(DeferredModel):
    """``PUT /api/sessions/{id}/label`` (null clears the label)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, pattern=LABEL)


class SessionSummary(DeferredModel):
    session_id: str
    agent_id: str
    label: str | None = None
    message_count: int
    created_at: str
    updated_at: str
    active: bool
    is_canonical: bool


class SessionList(DeferredModel):
    sessions: list[SessionSummary]
    total: int


class SessionListQuery(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(None, max_length=64)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000_000)


class SearchQuery(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1, max_length=500)
    agent_id: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=500)


class SearchHit(DeferredModel):
    session_id: str
    agent_id: str
    label: str | None = None
    role: str
    snippet: str
    created_at: str


class SearchResults(DeferredModel):
    results: list[SearchHit]
    total: int


class StatusMessage(DeferredModel):
    status: str
    message: str
    session_id: str | None = None
    label: str | None = None
    deleted: int | None = None


class ExportQuery(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    format: str = Field("json", pattern=r"^json$")


class ExportedMessage(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(pattern=r"^(user|assistant)$")
    content: str | list[dict[str, Any]] = Field(max_length=1000)
    timestamp: str | None = Field(None, max_length=64)


class SessionExport(DeferredModel):
    """``GET …/sessions/{sid}/export``; the same shape is accepted by ``POST …/sessions/import``."""

    model_config = ConfigDict(extra="ignore")

    version: int = Field(1, ge=1, le=1)
    agent_name: str = Field("", max_length=64)
    agent_id: str = Field("", max_length=64)
    session_id: str = Field("", max_length=64)
    label: str | None = Field(None, pattern=LABEL)
    context_window_tokens: int = Field(0, ge=0)
    exported_at: str = Field("", max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    messages: list[ExportedMessage]

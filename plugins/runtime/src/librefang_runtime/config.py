"""The ``[runtime]`` section of ``config.toml``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RuntimeConfig(BaseModel):
    """``[runtime]``: limits of the agent loop, tools, sessions and the messaging API."""

    model_config = ConfigDict(extra="forbid")

    max_iterations: int = Field(50, ge=1, le=1000, description="LLM calls per turn when the manifest sets none")
    tool_timeout_secs: float = Field(120.0, gt=0, le=3600, description="Time limit of one tool call")
    max_tool_result_chars: int = Field(16_000, ge=100, le=10_000_000, description="Longer tool results are cut")
    max_tool_calls_per_reply: int = Field(32, ge=1, le=1000, description="Tool calls run from one model reply")
    loop_guard_warn: int = Field(3, ge=2, le=100, description="Same tool and input this often: warn the model")
    loop_guard_block: int = Field(5, ge=2, le=100, description="Same tool and input this often: refuse the call")
    max_message_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest user message")
    max_message_chars: int = Field(100_000, ge=100, le=10_000_000, description="Longest user message")
    max_session_messages: int = Field(2000, ge=10, le=1_000_000, description="Messages kept per session")
    session_retention_days: int = Field(
        0, ge=0, le=100_000, description="POST /api/sessions/cleanup deletes sessions idle this long (0 = never)")
    ws_max_connections_per_ip: int = Field(5, ge=1, le=10_000, description="WebSocket connections per client IP")
    ws_messages_per_minute: int = Field(10, ge=1, le=10_000, description="Frames a WebSocket may send per minute")
    ws_idle_timeout_secs: float = Field(1800.0, gt=0, le=86_400, description="Close a silent WebSocket after this")
    web_fetch_allowed_hosts: list[str] = Field(
        default_factory=list, max_length=500,
        description="Host names, *.globs or CIDRs web_fetch may reach although private (metadata ranges stay blocked)")
    web_fetch_max_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Page size cap")
    web_fetch_timeout_secs: float = Field(20.0, gt=0, le=600, description="Time limit of one web_fetch request")
    sse_keepalive_secs: float = Field(15.0, gt=0, le=300, description="Keep-alive comment interval of SSE")
    max_attachments: int = Field(10, ge=0, le=20, description="Uploaded files one message may attach")
    max_attachments_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Total size of the files one message attaches")
    max_attachment_text_chars: int = Field(
        200_000, ge=1000, le=10_000_000, description="A text file attached is inlined up to this many characters")
    max_history_images: int = Field(
        4, ge=0, le=100, description="Images of earlier messages sent to the model again (newest first)")


class ToolInvokeConfig(BaseModel):
    """``[tool_invoke]``: direct tool calls over HTTP (``POST /api/tools/{name}/invoke``). Fail-closed:
    off unless enabled, and then only for tools matching an ``allowlist`` glob."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Allow POST /api/tools/{name}/invoke at all")
    allowlist: list[str] = Field(default_factory=list, max_length=500,
                                 description='Glob patterns of tool names that may be invoked, e.g. ["file_*"]')

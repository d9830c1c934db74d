"""Normalised LLM request, response and stream-event types shared by every driver.

Plain slotted dataclasses rather than pydantic models: a stream creates one event object per
token, so construction cost is on the hot path (see ``bench/bench_providers.py``).

Token accounting (:class:`Usage`): ``input_tokens`` counts every prompt token the provider billed,
*including* the ones read from or written to its prompt cache; ``cache_read_tokens`` and
``cache_write_tokens`` are the cached subsets. Drivers convert each provider's convention to this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Normalised stop reasons (strings, not an enum: cheap to compare and to serialise).
END_TURN = "end_turn"
TOOL_USE = "tool_use"
MAX_TOKENS = "max_tokens"
STOP_SEQUENCE = "stop_sequence"
CONTENT_FILTERED = "content_filtered"
STOP_REASONS = (END_TURN, TOOL_USE, MAX_TOKENS, STOP_SEQUENCE, CONTENT_FILTERED)

Role = Literal["user", "assistant"]


# -- content blocks ------------------------------------------------------------------------------
@dataclass(slots=True)
class TextBlock:
    """Plain text."""

    text: str
    type: Literal["text"] = "text"


@dataclass(slots=True)
class ImageBlock:
    """An image: base64 ``data`` with its ``media_type``, or a remote ``url``."""

    media_type: str = "image/png"
    data: str = ""
    url: str = ""
    type: Literal["image"] = "image"


@dataclass(slots=True)
class ToolUseBlock:
    """A tool call made by the model. ``signature`` is an opaque provider token echoed back on the
    next turn (Gemini thought signatures); callers keep it unchanged."""

    id: str
    name: str
    input: dict[str, Any] = field(default_factory=dict)
    signature: str | None = None
    type: Literal["tool_use"] = "tool_use"


@dataclass(slots=True)
class ToolResultBlock:
    """The result of a tool call, sent back in a user message. ``name`` is the tool's name (Gemini
    and Ollama need it; when empty, drivers look it up from the matching tool_use block)."""

    tool_use_id: str
    content: str
    is_error: bool = False
    name: str = ""
    type: Literal["tool_result"] = "tool_result"


@dataclass(slots=True)
class ThinkingBlock:
    """Model reasoning. ``signature`` (Anthropic) must be echoed back with the block."""

    text: str
    signature: str | None = None
    type: Literal["thinking"] = "thinking"


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock


@dataclass(slots=True)
class Message:
    """One conversation turn. ``content`` is a string (plain text) or a list of blocks."""

    role: Role
    content: str | list[Block]

    def blocks(self) -> list[Block]:
        """The content as a list of blocks."""
        if isinstance(self.content, str):
            return [TextBlock(self.content)] if self.content else []
        return self.content


@dataclass(slots=True)
class ToolDefinition:
    """A tool offered to the model; ``input_schema`` is a JSON Schema object."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(slots=True)
class ResponseFormat:
    """Ask for structured output: ``json`` (any JSON object) or ``json_schema`` (``schema`` given)."""

    type: Literal["text", "json", "json_schema"] = "json"
    schema: dict[str, Any] | None = None
    name: str = "response"


@dataclass(slots=True)
class CompletionRequest:
    """A provider-independent completion request.

    ``timeout`` (seconds) bounds the whole call; ``extra_body`` is merged into the provider's request
    body as-is (provider-specific knobs); ``thinking_budget`` asks for reasoning where supported.
    """

    model: str
    messages: list[Message]
    system: str | None = None
    tools: list[ToolDefinition] = field(default_factory=list)
    max_tokens: int = 4096
    temperature: float | None = None
    stop: list[str] = field(default_factory=list)
    response_format: ResponseFormat | None = None
    timeout: float | None = None
    thinking_budget: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    """Token counts of one call (see the module docstring for the cache convention)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def add(self, other: Usage) -> None:
        """Accumulate ``other`` into this object (several calls of one agent turn)."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens


@dataclass(slots=True)
class CompletionResponse:
    """What a call produced, and which ``provider``/``model`` actually served it."""

    content: list[Block]
    stop_reason: str
    usage: Usage
    provider: str
    model: str

    @property
    def text(self) -> str:
        """All text blocks joined."""
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_calls(self) -> list[ToolUseBlock]:
        """The tool_use blocks, in order."""
        return [b for b in self.content if isinstance(b, ToolUseBlock)]

    @property
    def thinking(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, ThinkingBlock))


# -- stream events -------------------------------------------------------------------------------
@dataclass(slots=True)
class TextDelta:
    text: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(slots=True)
class ThinkingDelta:
    text: str
    type: Literal["thinking_delta"] = "thinking_delta"


@dataclass(slots=True)
class ToolUseStart:
    id: str
    name: str
    type: Literal["tool_use_start"] = "tool_use_start"


@dataclass(slots=True)
class ToolInputDelta:
    """A piece of the tool call's JSON arguments, as the provider sent it (may split anywhere)."""

    id: str
    text: str
    type: Literal["tool_input_delta"] = "tool_input_delta"


@dataclass(slots=True)
class ToolUseEnd:
    """The tool call is complete; ``input`` is the parsed JSON object."""

    id: str
    name: str
    input: dict[str, Any]
    signature: str | None = None
    type: Literal["tool_use_end"] = "tool_use_end"


@dataclass(slots=True)
class ContentComplete:
    """The last event of a stream."""

    stop_reason: str
    usage: Usage
    provider: str = ""
    model: str = ""
    type: Literal["content_complete"] = "content_complete"


StreamEvent = TextDelta | ThinkingDelta | ToolUseStart | ToolInputDelta | ToolUseEnd | ContentComplete


# -- configuration handed to driver factories ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What the registry needs to know about a provider: where it is and which wire ``format``
    (the name of a registered driver factory: openai, anthropic, gemini, ollama, or a third party's)."""

    id: str
    base_url: str
    format: str = "openai"
    api_key_env: str = ""
    key_required: bool = True


@dataclass(slots=True)
class DriverConfig:
    """Everything a driver factory gets. ``api_key`` is resolved already and must never be logged,
    serialised or echoed; ``http_client`` is a shared pooled ``httpx.AsyncClient`` (may be None: a
    built-in driver then takes it from ``pool`` when it needs one); ``pool`` is the registry's shared
    ``HTTPPool`` (the clients of the built-in drivers' completion calls, and that httpx client)."""

    provider: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    request_timeout: float = 120.0
    connect_timeout: float = 10.0
    stream_idle_timeout: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    http_client: Any = field(default=None, repr=False)
    pool: Any = field(default=None, repr=False)


@dataclass(slots=True)
class Target:
    """One slot of a fallback chain: provider and model, optionally its own base URL and key var."""

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None

"""The providers plugin's public API: what other plugins (agents, runtime, media...) import.

Build a :class:`CompletionRequest`, get the registry with :func:`get_registry`, then
``await registry.complete(request, provider="openai")`` or
``async for event in registry.stream(request, provider="openai")``; vectors with
``await embed(registry, texts, provider="openai", model="text-embedding-3-small")``. Third parties add providers with
the ``register_llm_providers(register)`` hook: ``register("name", factory)`` where
``factory(DriverConfig)`` returns an object satisfying :class:`LLMDriver`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from librefang_providers.config import FallbackProvider, ProvidersConfig, load_fallback_providers
from librefang_providers.embeddings import embed
from librefang_providers.errors import (
    AllProvidersExhausted,
    Attempt,
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    ContextTooLong,
    LLMError,
    MissingApiKey,
    ModelNotFound,
    Overloaded,
    RateLimited,
    TimedOut,
    UnknownProvider,
    UpstreamError,
)
from librefang_providers.eventstream import EventStream
from librefang_providers.registry import LLMRegistry
from librefang_providers.ssrf import AllowList, SsrfError, check_fetch_url
from librefang_providers.types import (
    CONTENT_FILTERED,
    END_TURN,
    MAX_TOKENS,
    STOP_SEQUENCE,
    TOOL_USE,
    Block,
    CompletionRequest,
    CompletionResponse,
    ContentComplete,
    DriverConfig,
    ImageBlock,
    Message,
    ProviderSpec,
    ResponseFormat,
    StreamEvent,
    Target,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolDefinition,
    ToolInputDelta,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseEnd,
    ToolUseStart,
    Usage,
)

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

SERVICE_KEY = "providers.registry"


@runtime_checkable
class LLMDriver(Protocol):
    """The driver interface every provider implements."""

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One call, the whole answer at once."""
        ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        """The answer as events; the last one is :class:`ContentComplete`."""
        ...


def create_registry(kernel: Kernel) -> LLMRegistry:
    """A registry configured from the kernel: ``[providers]``, ``[[fallback_providers]]``, the vault,
    the built-in wire formats, and every plugin's ``register_llm_providers`` hook."""
    from librefang.plugins import PluginBound

    from librefang_providers.drivers import BUILTIN_FORMATS, builtin_factory

    config = kernel.config.section("providers") if kernel.config.has_section("providers") else ProvidersConfig()
    try:
        fallbacks = load_fallback_providers(kernel.config.raw)
    except ValueError as exc:
        from librefang.errors import ConfigError

        raise ConfigError(str(exc)) from None

    def vault_get(name: str) -> str | None:
        try:
            return kernel.vault.get(name)
        except Exception:  # an unreadable vault means "no key there", reported by auth status
            return None

    def vault_names() -> list[str]:
        try:
            return kernel.vault.names()
        except Exception:
            return []

    registry = LLMRegistry(config, fallbacks=fallbacks, resolve_secret=kernel.secret,
                           vault_get=vault_get, vault_names=vault_names)

    # Built-in formats first, whatever the plugin order: a third party cannot take their names over.
    # (their modules, and aiohttp, are imported when the first driver is built; httpx when first needed).
    for name in BUILTIN_FORMATS:
        registry.register(name, builtin_factory(name), owner="providers")

    def register(plugin: str, name: str, factory: Any) -> None:
        registry.register(name, factory, owner=plugin)

    kernel.plugins.call("register_llm_providers", register=PluginBound(register))
    return registry


def get_registry(kernel: Kernel) -> LLMRegistry:
    """The kernel's LLM registry (created on first use; closed when the providers plugin stops)."""
    registry = kernel.services.get(SERVICE_KEY)
    if registry is None:
        registry = create_registry(kernel)
        kernel.services[SERVICE_KEY] = registry
    return registry


async def events_from_response(response: CompletionResponse) -> AsyncIterator[StreamEvent]:
    """The events a stream of ``response`` would have produced. A driver whose provider cannot stream
    implements ``stream`` as ``async for e in events_from_response(await self.complete(request)): yield e``."""
    for block in response.content:
        if isinstance(block, ThinkingBlock):
            yield ThinkingDelta(block.text)
        elif isinstance(block, TextBlock):
            yield TextDelta(block.text)
        elif isinstance(block, ToolUseBlock):
            yield ToolUseStart(block.id, block.name)
            yield ToolUseEnd(block.id, block.name, block.input, block.signature)
    yield ContentComplete(response.stop_reason, response.usage, response.provider, response.model)


async def collect(events: AsyncIterator[StreamEvent]) -> CompletionResponse:
    """Fold a stream into the :class:`CompletionResponse` a ``complete`` call would have returned."""
    content: list[Block] = []
    text: list[str] = []
    thinking: list[str] = []
    done: list[ContentComplete] = []
    # The registry's stream: its events arrive in lists (one per network read), folded without a
    # generator step per event. Any other async iterator is read event by event.
    batches = events.batches() if type(events) is EventStream else None
    if batches is not None:
        async for batch in batches:
            for event in batch:
                if type(event) is TextDelta:
                    text.append(event.text)
                else:
                    _fold(event, content, text, thinking, done)
    else:
        async for event in events:
            if type(event) is TextDelta:
                text.append(event.text)
            else:
                _fold(event, content, text, thinking, done)
    _flush_text(content, text, thinking)
    if not done:
        raise BadResponse("stream ended without a content_complete event")
    last = done[-1]
    return CompletionResponse(content, last.stop_reason, last.usage, last.provider, last.model)


def _fold(event: StreamEvent, content: list[Block], text: list[str], thinking: list[str],
          done: list[ContentComplete]) -> None:
    """``collect`` for every event but a plain text delta."""
    if isinstance(event, TextDelta):
        text.append(event.text)
    elif isinstance(event, ThinkingDelta):
        thinking.append(event.text)
    elif isinstance(event, ToolUseEnd):
        _flush_text(content, text, thinking)
        content.append(ToolUseBlock(event.id, event.name, event.input, event.signature))
    elif isinstance(event, ContentComplete):
        done.append(event)


def _flush_text(content: list[Block], text: list[str], thinking: list[str]) -> None:
    if thinking:
        content.append(ThinkingBlock("".join(thinking)))
        thinking.clear()
    if text:
        content.append(TextBlock("".join(text)))
        text.clear()


__all__ = [
    "AllProvidersExhausted", "AllowList", "Attempt", "AuthFailed", "BadResponse", "Block", "CONTENT_FILTERED",
    "CompletionRequest", "CompletionResponse", "ConnectionFailed", "ContentComplete", "ContextTooLong",
    "DriverConfig", "END_TURN", "EventStream", "FallbackProvider", "ImageBlock", "LLMDriver", "LLMError", "LLMRegistry",
    "MAX_TOKENS", "Message", "MissingApiKey", "ModelNotFound", "Overloaded", "ProviderSpec",
    "ProvidersConfig", "RateLimited", "ResponseFormat", "STOP_SEQUENCE", "SERVICE_KEY", "SsrfError", "StreamEvent",
    "TOOL_USE", "Target", "TextBlock", "TextDelta", "ThinkingBlock", "ThinkingDelta", "TimedOut",
    "ToolDefinition", "ToolInputDelta", "ToolResultBlock", "ToolUseBlock", "ToolUseEnd", "ToolUseStart",
    "UnknownProvider", "UpstreamError", "Usage", "check_fetch_url", "collect", "create_registry", "embed",
    "events_from_response",
    "get_registry",
]

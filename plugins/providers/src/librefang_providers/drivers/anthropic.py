"""Anthropic Messages API driver (``{base_url}/v1/messages``).

Streaming events: ``message_start`` (input usage) → per block ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``, ``signature_delta``) /
``content_block_stop`` → ``message_delta`` (stop reason, output usage) → ``message_stop``; ``ping`` and
``error`` may come at any time.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from librefang_providers.drivers import DEFAULT_BASE_URLS
from librefang_providers.drivers.base import TRANSPORT_ERRORS, HTTPDriver, load_json, parse_tool_input
from librefang_providers.drivers.sse import SSEDecoder, StreamTooLarge
from librefang_providers.types import (
    CONTENT_FILTERED,
    END_TURN,
    MAX_TOKENS,
    STOP_SEQUENCE,
    TOOL_USE,
    CompletionRequest,
    CompletionResponse,
    ContentComplete,
    ImageBlock,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolInputDelta,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseEnd,
    ToolUseStart,
    Usage,
)

API_VERSION = "2023-06-01"
STOP_REASONS = {
    "end_turn": END_TURN,
    "tool_use": TOOL_USE,
    "max_tokens": MAX_TOKENS,
    "stop_sequence": STOP_SEQUENCE,
    "refusal": CONTENT_FILTERED,
    "pause_turn": END_TURN,
}


def _block(block: Any) -> dict[str, Any] | None:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text} if block.text else None
    if isinstance(block, ImageBlock):
        if block.url:
            return {"type": "image", "source": {"type": "url", "url": block.url}}
        return {"type": "image", "source": {"type": "base64", "media_type": block.media_type, "data": block.data}}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    if isinstance(block, ToolResultBlock):
        return {"type": "tool_result", "tool_use_id": block.tool_use_id, "content": block.content,
                "is_error": block.is_error}
    if isinstance(block, ThinkingBlock):
        # Only signed thinking can be sent back; unsigned reasoning (from another provider) is dropped.
        if block.signature:
            return {"type": "thinking", "thinking": block.text, "signature": block.signature}
    return None


def build_messages(request: CompletionRequest) -> list[dict[str, Any]]:
    """Normalised messages → Messages API messages (content blocks map one to one)."""
    out: list[dict[str, Any]] = []
    for message in request.messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        blocks = [b for b in (_block(x) for x in message.content) if b is not None]
        if blocks:
            out.append({"role": message.role, "content": blocks})
    return out


def _usage(raw: Any, usage: Usage) -> None:
    """Fold an Anthropic usage object into ``usage`` (its input_tokens excludes cache tokens)."""
    if not isinstance(raw, dict):
        return
    cache_read = raw.get("cache_read_input_tokens")
    cache_write = raw.get("cache_creation_input_tokens")
    if cache_read is not None:
        usage.cache_read_tokens = cache_read or 0
    if cache_write is not None:
        usage.cache_write_tokens = cache_write or 0
    if raw.get("input_tokens") is not None:
        usage.input_tokens = (raw["input_tokens"] or 0) + usage.cache_read_tokens + usage.cache_write_tokens
    if raw.get("output_tokens") is not None:
        usage.output_tokens = raw["output_tokens"] or 0


class AnthropicDriver(HTTPDriver):
    """Messages API over HTTP."""

    default_base_url = DEFAULT_BASE_URLS["anthropic"]

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json",
                   "anthropic-version": API_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        headers.update(self.config.headers)
        return headers

    @property
    def url(self) -> str:
        base = self.base_url
        return base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def build_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens,
                                "messages": build_messages(request)}
        system = request.system or ""
        fmt = request.response_format
        if fmt is not None and fmt.type != "text":
            # The Messages API has no JSON mode; the instruction is the documented way to ask for it.
            rule = "Reply with one JSON object only, no prose."
            if fmt.type == "json_schema" and fmt.schema:
                rule += " It must match this JSON Schema: " + json.dumps(fmt.schema)
            system = f"{system}\n\n{rule}" if system else rule
        if system:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            body["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.input_schema}
                             for t in request.tools]
        if request.thinking_budget:
            body["thinking"] = {"type": "enabled", "budget_tokens": request.thinking_budget}
        if stream:
            body["stream"] = True
        body.update(request.extra_body)
        return body

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One non-streaming call."""
        data = await self.post_json(self.url, self.build_body(request, stream=False), self.headers(), request)
        if not isinstance(data, dict) or data.get("type") == "error" or "content" not in data:
            raise self.stream_error(data, request.model) if isinstance(data, dict) and "error" in data \
                else self.incomplete(request.model, "")
        content: list[Any] = []
        for block in data.get("content") or []:
            kind = block.get("type")
            if kind == "text":
                content.append(TextBlock(block.get("text", "")))
            elif kind == "tool_use":
                content.append(ToolUseBlock(block.get("id", ""), block.get("name", ""), block.get("input") or {}))
            elif kind == "thinking":
                content.append(ThinkingBlock(block.get("thinking", ""), block.get("signature")))
        usage = Usage()
        _usage(data.get("usage"), usage)
        return CompletionResponse(content=content, stop_reason=STOP_REASONS.get(data.get("stop_reason"), END_TURN),
                                  usage=usage, provider=self.provider, model=data.get("model") or request.model)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        """Stream the call as normalised events."""
        model = request.model
        text: list[str] = []
        blocks: dict[int, list[Any]] = {}  # index -> [type, id, name, [json pieces]]
        usage = Usage()
        stop: str | None = None
        finished = False
        served_model = model
        deadline = self.deadline(request)
        decoder = SSEDecoder()
        loads = load_json
        async with self.open_stream(self.url, self.build_body(request, stream=True), self.headers(), request) as resp:
            try:
                async for chunk in resp.aiter_bytes():
                    if time.monotonic() > deadline:
                        raise self.timed_out(model, "".join(text))
                    for _name, data in decoder.feed(chunk):
                        try:
                            obj = loads(data)
                        except ValueError:
                            raise self.bad_json(model, "".join(text)) from None
                        kind = obj.get("type")
                        if kind == "content_block_delta":
                            delta = obj.get("delta") or {}
                            dkind = delta.get("type")
                            if dkind == "text_delta":
                                piece = delta.get("text", "")
                                text.append(piece)
                                yield TextDelta(piece)
                            elif dkind == "input_json_delta":
                                state = blocks.get(obj.get("index", -1))
                                piece = delta.get("partial_json", "")
                                if state is not None and piece:
                                    state[3].append(piece)
                                    yield ToolInputDelta(state[1], piece)
                            elif dkind == "thinking_delta":
                                yield ThinkingDelta(delta.get("thinking", ""))
                        elif kind == "content_block_start":
                            block = obj.get("content_block") or {}
                            state = [block.get("type"), block.get("id", ""), block.get("name", ""), []]
                            blocks[obj.get("index", len(blocks))] = state
                            if state[0] == "tool_use":
                                yield ToolUseStart(state[1], state[2])
                        elif kind == "content_block_stop":
                            state = blocks.get(obj.get("index", -1))
                            if state is not None and state[0] == "tool_use":
                                args = parse_tool_input("".join(state[3]), self, model)
                                yield ToolUseEnd(state[1], state[2], args)
                        elif kind == "message_start":
                            message = obj.get("message") or {}
                            served_model = message.get("model") or model
                            _usage(message.get("usage"), usage)
                        elif kind == "message_delta":
                            stop = (obj.get("delta") or {}).get("stop_reason") or stop
                            _usage(obj.get("usage"), usage)
                        elif kind == "message_stop":
                            finished = True
                        elif kind == "error":
                            raise self.stream_error(obj, model)
            except TRANSPORT_ERRORS as exc:
                raise self.transport_error(exc, model, "".join(text), bool(text) or bool(blocks)) from None
            except StreamTooLarge:
                raise self.bad_json(model, "".join(text)) from None
        if not finished:
            raise self.incomplete(model, "".join(text))
        yield ContentComplete(STOP_REASONS.get(stop or "end_turn", END_TURN), usage, self.provider, served_model)

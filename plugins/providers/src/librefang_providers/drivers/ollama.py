"""Ollama native chat driver (``{base_url}/api/chat``), streaming newline-delimited JSON.

Each line is ``{"message": {"content", "thinking"?, "tool_calls"?}, "done": false}``; the last has
``done: true``, ``done_reason`` and the token counts (``prompt_eval_count``, ``eval_count``). Tool
calls arrive whole, with ``arguments`` as an object; ids are made up when Ollama sends none.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from librefang_providers.drivers import DEFAULT_BASE_URLS
from librefang_providers.drivers.base import TRANSPORT_ERRORS, HTTPDriver, load_json, parse_tool_input
from librefang_providers.drivers.sse import LineDecoder, StreamTooLarge
from librefang_providers.types import (
    END_TURN,
    MAX_TOKENS,
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

DONE_REASONS = {"stop": END_TURN, "length": MAX_TOKENS}


def build_messages(request: CompletionRequest) -> list[dict[str, Any]]:
    """Normalised messages → Ollama chat messages (images as base64 list, tool results as ``role: tool``)."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        text: list[str] = []
        images: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in message.content:
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ImageBlock) and block.data:
                images.append(block.data)
            elif isinstance(block, ToolUseBlock):
                names[block.id] = block.name
                calls.append({"function": {"name": block.name, "arguments": block.input}})
            elif isinstance(block, ToolResultBlock):
                content = f"Error: {block.content}" if block.is_error else block.content
                out.append({"role": "tool", "content": content,
                            "tool_name": block.name or names.get(block.tool_use_id, "")})
        if text or images or calls:
            entry: dict[str, Any] = {"role": message.role, "content": "".join(text)}
            if images:
                entry["images"] = images
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
    return out


def _usage(obj: dict[str, Any]) -> Usage:
    return Usage(input_tokens=obj.get("prompt_eval_count") or 0, output_tokens=obj.get("eval_count") or 0)


class OllamaDriver(HTTPDriver):
    """Ollama's native API over HTTP (no key needed locally; a key is sent as Bearer for remote hosts)."""

    default_base_url = DEFAULT_BASE_URLS["ollama"]

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/x-ndjson"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        headers.update(self.config.headers)
        return headers

    @property
    def url(self) -> str:
        # Catalogs often give Ollama's OpenAI-compatible ".../v1" base; the native API is at the root.
        return self.base_url.removesuffix("/v1") + "/api/chat"

    def build_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.stop:
            options["stop"] = request.stop
        body: dict[str, Any] = {"model": request.model, "messages": build_messages(request),
                                "stream": stream, "options": options}
        if request.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema}}
                for t in request.tools]
        fmt = request.response_format
        if fmt is not None and fmt.type == "json":
            body["format"] = "json"
        elif fmt is not None and fmt.type == "json_schema":
            body["format"] = fmt.schema or "json"
        if request.thinking_budget:
            body["think"] = True
        body.update(request.extra_body)
        return body

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One non-streaming call."""
        data = await self.post_json(self.url, self.build_body(request, stream=False), self.headers(), request)
        if not isinstance(data, dict) or "error" in data or "message" not in data:
            raise self.stream_error(data, request.model) if isinstance(data, dict) and "error" in data \
                else self.incomplete(request.model, "")
        message = data.get("message") or {}
        content: list[Any] = []
        if message.get("thinking"):
            content.append(ThinkingBlock(message["thinking"]))
        if message.get("content"):
            content.append(TextBlock(message["content"]))
        for index, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            content.append(ToolUseBlock(call.get("id") or f"call_{index}", function.get("name", ""),
                                        self._arguments(function.get("arguments"), request.model)))
        stop = DONE_REASONS.get(data.get("done_reason") or "stop", END_TURN)
        if stop == END_TURN and any(isinstance(b, ToolUseBlock) for b in content):
            stop = TOOL_USE
        return CompletionResponse(content, stop, _usage(data), self.provider, data.get("model") or request.model)

    def _arguments(self, value: Any, model: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if isinstance(value, str):  # some model templates produce a JSON string
            return parse_tool_input(value, self, model)
        return {}

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        """Stream the call as normalised events."""
        model = request.model
        text: list[str] = []
        calls = 0
        final: dict[str, Any] | None = None
        deadline = self.deadline(request)
        decoder = LineDecoder()
        loads = load_json
        async with self.open_stream(self.url, self.build_body(request, stream=True), self.headers(), request) as resp:
            try:
                async for chunk in resp.aiter_bytes():
                    if time.monotonic() > deadline:
                        raise self.timed_out(model, "".join(text))
                    for line in decoder.feed(chunk):
                        try:
                            obj = loads(line)
                        except ValueError:
                            raise self.bad_json(model, "".join(text)) from None
                        if "error" in obj:
                            raise self.stream_error(obj, model)
                        message = obj.get("message")
                        if message:
                            piece = message.get("content")
                            if piece:
                                text.append(piece)
                                yield TextDelta(piece)
                            if message.get("thinking"):
                                yield ThinkingDelta(message["thinking"])
                            for call in message.get("tool_calls") or ():
                                function = call.get("function") or {}
                                call_id = call.get("id") or f"call_{calls}"
                                calls += 1
                                name = function.get("name", "")
                                args = self._arguments(function.get("arguments"), model)
                                yield ToolUseStart(call_id, name)
                                yield ToolInputDelta(call_id, json.dumps(args, ensure_ascii=False))
                                yield ToolUseEnd(call_id, name, args)
                        if obj.get("done"):
                            final = obj
                for line in decoder.flush():
                    try:
                        obj = loads(line)
                    except ValueError:
                        raise self.bad_json(model, "".join(text)) from None
                    if obj.get("done"):
                        final = obj
            except TRANSPORT_ERRORS as exc:
                raise self.transport_error(exc, model, "".join(text), bool(text) or calls > 0) from None
            except StreamTooLarge:
                raise self.bad_json(model, "".join(text)) from None
        if final is None:
            raise self.incomplete(model, "".join(text))
        stop = DONE_REASONS.get(final.get("done_reason") or "stop", END_TURN)
        if stop == END_TURN and calls:
            stop = TOOL_USE
        yield ContentComplete(stop, _usage(final), self.provider, final.get("model") or model)

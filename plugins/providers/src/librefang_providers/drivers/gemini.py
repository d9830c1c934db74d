"""Google Gemini driver: ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``.

The key travels in the ``x-goog-api-key`` header, never in the URL (URLs end up in exception
messages and logs). Gemini sends each function call whole (``functionCall{name, args}``) and has no
call ids in older models, so ids are made up per response; tool results are matched back by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from librefang_providers.drivers import DEFAULT_BASE_URLS
from librefang_providers.drivers.base import TRANSPORT_ERRORS, HTTPDriver, load_json
from librefang_providers.drivers.sse import SSEDecoder, StreamTooLarge
from librefang_providers.retry import parse_duration
from librefang_providers.types import (
    CONTENT_FILTERED,
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

FINISH_REASONS = {"STOP": END_TURN, "MAX_TOKENS": MAX_TOKENS}
FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}


def build_contents(request: CompletionRequest) -> list[dict[str, Any]]:
    """Normalised messages → Gemini ``contents`` (role ``model`` for the assistant)."""
    names: dict[str, str] = {}  # tool_use id -> name, for functionResponse
    out: list[dict[str, Any]] = []
    for message in request.messages:
        role = "model" if message.role == "assistant" else "user"
        parts: list[dict[str, Any]] = []
        for block in message.blocks():
            if isinstance(block, TextBlock):
                if block.text:
                    parts.append({"text": block.text})
            elif isinstance(block, ImageBlock):
                if block.url:
                    parts.append({"fileData": {"mimeType": block.media_type, "fileUri": block.url}})
                else:
                    parts.append({"inlineData": {"mimeType": block.media_type, "data": block.data}})
            elif isinstance(block, ToolUseBlock):
                names[block.id] = block.name
                part: dict[str, Any] = {"functionCall": {"name": block.name, "args": block.input}}
                if block.signature:
                    part["thoughtSignature"] = block.signature
                parts.append(part)
            elif isinstance(block, ToolResultBlock):
                name = block.name or names.get(block.tool_use_id, "")
                key = "error" if block.is_error else "content"
                parts.append({"functionResponse": {"name": name, "response": {key: block.content}}})
        if parts:
            out.append({"role": role, "parts": parts})
    return out


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(
        input_tokens=raw.get("promptTokenCount") or 0,
        output_tokens=(raw.get("candidatesTokenCount") or 0) + (raw.get("thoughtsTokenCount") or 0),
        cache_read_tokens=raw.get("cachedContentTokenCount") or 0,
    )


class GeminiDriver(HTTPDriver):
    """Generative Language API over HTTP."""

    default_base_url = DEFAULT_BASE_URLS["gemini"]

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.config.api_key:
            headers["x-goog-api-key"] = self.config.api_key
        headers.update(self.config.headers)
        return headers

    def url(self, model: str, *, stream: bool) -> str:
        base = self.base_url
        if not base.rsplit("/", 1)[-1].startswith("v1"):
            base += "/v1beta"  # a bare host was configured
        name = quote(model.removeprefix("models/"), safe="-._~")
        return f"{base}/models/{name}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": build_contents(request)}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.stop:
            config["stopSequences"] = request.stop
        fmt = request.response_format
        if fmt is not None and fmt.type != "text":
            config["responseMimeType"] = "application/json"
            if fmt.type == "json_schema" and fmt.schema:
                config["responseJsonSchema"] = fmt.schema
        if request.thinking_budget:
            config["thinkingConfig"] = {"thinkingBudget": request.thinking_budget, "includeThoughts": True}
        body["generationConfig"] = config
        if request.tools:
            body["tools"] = [{"functionDeclarations": [
                {"name": t.name, "description": t.description, "parametersJsonSchema": t.input_schema}
                for t in request.tools
            ]}]
        body.update(request.extra_body)
        return body

    def retry_after_from_detail(self, detail: Any) -> float | None:
        """``RetryInfo.retryDelay`` from the error details (Gemini sends no Retry-After header)."""
        if isinstance(detail, dict):
            for item in detail.get("details") or ():
                if isinstance(item, dict) and "retryDelay" in item:
                    return parse_duration(item["retryDelay"])
        return None

    @staticmethod
    def _finish(reason: str | None, has_calls: bool) -> str:
        if reason in FILTERED:
            return CONTENT_FILTERED
        stop = FINISH_REASONS.get(reason or "STOP", END_TURN)
        return TOOL_USE if has_calls and stop == END_TURN else stop

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One non-streaming call."""
        data = await self.post_json(self.url(request.model, stream=False), self.build_body(request),
                                    self.headers(), request)
        if not isinstance(data, dict):
            raise self.incomplete(request.model, "")
        if "error" in data:
            raise self.stream_error(data, request.model)
        candidates = data.get("candidates") or []
        if not candidates:
            if (data.get("promptFeedback") or {}).get("blockReason"):
                return CompletionResponse([], CONTENT_FILTERED, _usage(data.get("usageMetadata")),
                                          self.provider, request.model)
            raise self.incomplete(request.model, "")
        candidate = candidates[0]
        content: list[Any] = []
        for index, part in enumerate((candidate.get("content") or {}).get("parts") or []):
            if "functionCall" in part:
                call = part["functionCall"]
                content.append(ToolUseBlock(call.get("id") or f"call_{index}", call.get("name", ""),
                                            call.get("args") or {}, part.get("thoughtSignature")))
            elif "text" in part:
                content.append(ThinkingBlock(part["text"]) if part.get("thought") else TextBlock(part["text"]))
        has_calls = any(isinstance(b, ToolUseBlock) for b in content)
        return CompletionResponse(content, self._finish(candidate.get("finishReason"), has_calls),
                                  _usage(data.get("usageMetadata")), self.provider,
                                  data.get("modelVersion") or request.model)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamEvent]:
        """Stream the call as normalised events (each SSE event is a whole response object)."""
        model = request.model
        text: list[str] = []
        calls = 0
        finish: str | None = None
        usage = Usage()
        served_model = model
        deadline = self.deadline(request)
        decoder = SSEDecoder()
        loads = load_json
        url = self.url(model, stream=True)
        async with self.open_stream(url, self.build_body(request), self.headers(), request) as resp:
            try:
                async for chunk in resp.aiter_bytes():
                    if time.monotonic() > deadline:
                        raise self.timed_out(model, "".join(text))
                    for _name, data in decoder.feed(chunk):
                        try:
                            obj = loads(data)
                        except ValueError:
                            raise self.bad_json(model, "".join(text)) from None
                        if "error" in obj:
                            raise self.stream_error(obj, model)
                        for candidate in obj.get("candidates") or ():
                            for part in (candidate.get("content") or {}).get("parts") or ():
                                if "text" in part:
                                    piece = part["text"]
                                    if part.get("thought"):
                                        yield ThinkingDelta(piece)
                                    elif piece:
                                        text.append(piece)
                                        yield TextDelta(piece)
                                elif "functionCall" in part:
                                    call = part["functionCall"]
                                    call_id = call.get("id") or f"call_{calls}"
                                    calls += 1
                                    name = call.get("name", "")
                                    args = call.get("args") or {}
                                    yield ToolUseStart(call_id, name)
                                    yield ToolInputDelta(call_id, json.dumps(args, ensure_ascii=False))
                                    yield ToolUseEnd(call_id, name, args, part.get("thoughtSignature"))
                            if candidate.get("finishReason"):
                                finish = candidate["finishReason"]
                            break  # one candidate is requested
                        if (obj.get("promptFeedback") or {}).get("blockReason"):
                            finish = "SAFETY"
                        if obj.get("usageMetadata"):
                            usage = _usage(obj["usageMetadata"])
                        served_model = obj.get("modelVersion") or served_model
            except TRANSPORT_ERRORS as exc:
                raise self.transport_error(exc, model, "".join(text), bool(text) or calls > 0) from None
            except StreamTooLarge:
                raise self.bad_json(model, "".join(text)) from None
        if finish is None:
            raise self.incomplete(model, "".join(text))
        yield ContentComplete(self._finish(finish, calls > 0), usage, self.provider, served_model)

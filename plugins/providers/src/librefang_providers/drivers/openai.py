"""OpenAI Chat Completions driver, also used for every OpenAI-compatible provider (by base URL).

Streaming: ``data:`` events of ``chat.completion.chunk`` objects, ended by ``data: [DONE]``. Tool calls
arrive as ``delta.tool_calls[{index, id?, function{name?, arguments?}}]`` pieces that are joined
by ``index``; arguments may be split anywhere. ``stream_options.include_usage`` asks for a last
chunk with usage. Reasoning models send ``delta.reasoning_content`` (DeepSeek, vLLM) or ``delta.reasoning``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from yarl import URL

from librefang_providers.drivers import DEFAULT_BASE_URLS
from librefang_providers.drivers.base import TRANSPORT_ERRORS, HTTPDriver, parse_tool_input
from librefang_providers.drivers.sse import SSEDecoder, StreamTooLarge
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

FINISH_REASONS = {
    "stop": END_TURN,
    "length": MAX_TOKENS,
    "tool_calls": TOOL_USE,
    "function_call": TOOL_USE,
    "content_filter": CONTENT_FILTERED,
}


def _image_url(block: ImageBlock) -> str:
    return block.url or f"data:{block.media_type};base64,{block.data}"


# ``json.dumps(value, ensure_ascii=False)`` builds a new JSONEncoder on every call (any non-default
# argument does); one shared encoder writes the same text (its encode() keeps no state between calls).
_dump_arguments = json.JSONEncoder(ensure_ascii=False).encode


def build_messages(request: CompletionRequest) -> list[dict[str, Any]]:
    """Normalised messages → Chat Completions messages (tool results become ``role: tool``).

    Runs over the whole history on every call, so each message is converted in one pass over its
    blocks, and a user message's parts are only built as dicts when it carries an image."""
    out: list[dict[str, Any]] = []
    append = out.append
    if request.system:
        append({"role": "system", "content": request.system})
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            append({"role": message.role, "content": content})
            continue
        if len(content) == 1 and type(content[0]) is TextBlock:  # the usual stored message: one text block
            if message.role == "assistant":
                append({"role": "assistant", "content": content[0].text or None})
            else:
                append({"role": "user", "content": content[0].text})
            continue
        if message.role == "assistant":
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            for b in content:
                if isinstance(b, TextBlock):
                    texts.append(b.text)
                elif isinstance(b, ToolUseBlock):
                    calls.append({"id": b.id, "type": "function",
                                  "function": {"name": b.name, "arguments": _dump_arguments(b.input)}})
            entry: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                entry["tool_calls"] = calls
            append(entry)
            continue
        texts = []
        images = False
        for block in content:
            if isinstance(block, ToolResultBlock):
                result = f"Error: {block.content}" if block.is_error else block.content
                append({"role": "tool", "tool_call_id": block.tool_use_id, "content": result})
            elif isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ImageBlock):
                images = True
        if images:
            parts: list[dict[str, Any]] = []
            for block in content:
                if isinstance(block, ToolResultBlock):
                    continue
                if isinstance(block, TextBlock):
                    parts.append({"type": "text", "text": block.text})
                elif isinstance(block, ImageBlock):
                    parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
            append({"role": "user", "content": parts})
        elif texts:
            append({"role": "user", "content": "".join(texts)})
    return out


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or raw.get("prompt_cache_hit_tokens") or 0
    return Usage(
        input_tokens=raw.get("prompt_tokens") or 0,
        output_tokens=raw.get("completion_tokens") or 0,
        cache_read_tokens=cached,
    )


class OpenAIDriver(HTTPDriver):
    """Chat Completions over HTTP (``{base_url}/chat/completions``)."""

    default_base_url = DEFAULT_BASE_URLS["openai"]
    _parsed_url: tuple[str, Any] | None = None  # (base_url, URL of url) for _target

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        headers.update(self.config.headers)
        return headers

    def build_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": build_messages(request)}
        # OpenAI's own reasoning models refuse max_tokens; compatible servers mostly know only max_tokens.
        body["max_completion_tokens" if self.provider == "openai" else "max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = request.stop
        if request.tools:
            body["tools"] = [
                {"type": "function",
                 "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}
                for t in request.tools
            ]
        fmt = request.response_format
        if fmt is not None and fmt.type == "json":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": fmt.name, "schema": fmt.schema or {}}}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(request.extra_body)
        return body

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One non-streaming call."""
        data = await self.post_json(self.url, self.build_body(request, stream=False), self.headers(), request)
        if isinstance(data, dict) and "error" in data and not data.get("choices"):
            raise self.stream_error(data, request.model)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise self.incomplete(request.model, "") from None
        content: list[Any] = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:
            content.append(ThinkingBlock(reasoning))
        if message.get("content"):
            content.append(TextBlock(message["content"]))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            content.append(ToolUseBlock(
                id=call.get("id") or f"call_{len(content)}",
                name=function.get("name", ""),
                input=parse_tool_input(function.get("arguments") or "", self, request.model),
            ))
        stop = FINISH_REASONS.get(choice.get("finish_reason") or "stop", END_TURN)
        if stop == END_TURN and any(isinstance(b, ToolUseBlock) for b in content):
            stop = TOOL_USE
        return CompletionResponse(content=content, stop_reason=stop, usage=_usage(data.get("usage")),
                                  provider=self.provider, model=data.get("model") or request.model)

    stream = HTTPDriver.stream_from_batches  # the events one by one (see stream_batches)

    def _target(self) -> Any:
        """``url`` parsed once (yarl.URL) while ``base_url`` stays the same: aiohttp parses a string on every call."""
        cached = self._parsed_url
        if cached is None or cached[0] != self.base_url:
            cached = self._parsed_url = (self.base_url, URL(self.url))
        return cached[1]

    async def stream_batches(self, request: CompletionRequest) -> AsyncIterator[list[StreamEvent]]:
        """Stream the call as normalised events (see the module docstring), one list per network read:
        the events a read completes are all there at once, so they travel to the consumer in one step."""
        model = request.model
        text: list[str] = []
        calls: dict[int, list[Any]] = {}  # index -> [id, name, [argument pieces]]
        finish: str | None = None
        usage = Usage()
        done = False
        served_model = model
        deadline = self.deadline(request)
        feed = SSEDecoder().feed
        loads = orjson.loads
        monotonic = time.monotonic
        resp = await self.start_stream(self._target(), self.build_body(request, stream=True), self.headers(), request)
        try:
            async for chunk in resp.content.iter_any():
                if monotonic() > deadline:
                    raise self.timed_out(model, "".join(text))
                failure: Exception | None = None
                out: list[StreamEvent] = []
                try:
                    for _name, data in feed(chunk):
                        if data == b"[DONE]":
                            done = True
                            continue
                        try:
                            obj = loads(data)
                        except ValueError:
                            try:  # what orjson refuses (NaN, lone surrogates...) json may read: load_json's rule
                                obj = json.loads(data)
                            except ValueError:
                                raise self.bad_json(model, "".join(text)) from None
                        choices = obj.get("choices")
                        if choices:
                            choice = choices[0]
                            delta = choice.get("delta")
                            if delta:
                                piece = delta.get("content")
                                if piece:
                                    text.append(piece)
                                    out.append(TextDelta(piece))
                                if "tool_calls" in delta or "reasoning_content" in delta or "reasoning" in delta:
                                    out += self._rare_delta(delta, calls)
                            if choice.get("finish_reason"):
                                finish = choice["finish_reason"]
                        elif "error" in obj:
                            raise self.stream_error(obj, model)
                        if obj.get("usage"):
                            usage = _usage(obj["usage"])
                        if obj.get("model"):
                            served_model = obj["model"]
                except StreamTooLarge:
                    failure = self.bad_json(model, "".join(text))
                except Exception as exc:  # raised after the events before it in this read are delivered
                    failure = exc
                # What came before a failure in the same read is delivered first, as it would have been
                # event by event (a stream that emitted anything is committed to its provider).
                if out:
                    yield out
                if failure is not None:
                    raise failure
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc, model, "".join(text), bool(text) or bool(calls)) from None
        finally:
            # Back to the pool when the body was read to its end; closed otherwise (aiohttp decides).
            resp.release()
        if finish is None and not done:
            raise self.incomplete(model, "".join(text))
        tail: list[StreamEvent] = []
        for index in sorted(calls):
            call_id, name, pieces = calls[index]
            tail.append(ToolUseEnd(call_id, name, parse_tool_input("".join(pieces), self, model)))
        stop = FINISH_REASONS.get(finish or "stop", END_TURN)
        if stop == END_TURN and calls:
            stop = TOOL_USE  # some compatible servers say "stop" after tool calls
        tail.append(ContentComplete(stop, usage, self.provider, served_model))
        yield tail

    @staticmethod
    def _rare_delta(delta: dict[str, Any], calls: dict[int, list[Any]]) -> list[StreamEvent]:
        """Reasoning and tool-call pieces (off the plain-text fast path)."""
        events: list[StreamEvent] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            events.append(ThinkingDelta(reasoning))
        for piece in delta.get("tool_calls") or ():
            index = piece.get("index", len(calls))
            function = piece.get("function") or {}
            state = calls.get(index)
            if state is None:
                state = calls[index] = [piece.get("id") or f"call_{index}", function.get("name") or "", []]
                events.append(ToolUseStart(state[0], state[1]))
            elif function.get("name") and not state[1]:
                state[1] = function["name"]
            arguments = function.get("arguments")
            if arguments:
                state[2].append(arguments)
                events.append(ToolInputDelta(state[0], arguments))
        return events

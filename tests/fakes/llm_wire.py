"""Wire formats spoken by the fake LLM server: OpenAI, Anthropic, Gemini and Ollama.

Each format turns a :class:`Script` into the provider's non-streaming JSON body, its stream
(a generator of byte strings, one per event) and its error bodies, following the providers'
published API references.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

FAULT_STATUS = {
    "rate_limit": 429,
    "server_error": 500,
    "overloaded": 503,
    "auth": 401,
    "model_not_found": 404,
    "context_too_long": 400,
}
HTTP_FAULTS = set(FAULT_STATUS)
STREAM_FAULTS = {"malformed", "stall", "drop"}


@dataclass
class ToolCall:
    """A tool call the fake model makes."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class Script:
    """One scripted reply. ``usage`` uses the normalised convention (input includes cached tokens)
    with keys ``input``, ``output``, ``cache_read``, ``cache_write``; each format converts it.

    ``chunk_size`` is characters per text delta / per piece of tool arguments; ``byte_chunk`` re-cuts
    the whole streamed body into writes of that many bytes (so lines and UTF-8 characters split);
    ``delay`` is slept between writes. ``fault`` is one of the keys of ``FAULT_STATUS`` (answered with
    that status, or ``status``) or ``malformed`` / ``stall`` / ``drop`` (after ``fault_after`` events).
    ``only`` restricts the script to requests of one wire format. ``raw_events`` replaces the
    generated stream with these exact strings (provider quirks, in-stream error events).
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    thinking: str = ""
    usage: dict[str, int] | None = None
    stop_reason: str | None = None
    chunk_size: int = 4
    byte_chunk: int | None = None
    delay: float = 0.0
    fault: str | None = None
    fault_after: int = 0
    status: int | None = None
    retry_after: str | None = "1"
    retry_after_ms: int | None = None
    only: str | None = None
    raw_events: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Script:
        """Build from JSON (the control endpoint); ``tool_calls`` entries are dicts."""
        data = dict(data)
        calls = [c if isinstance(c, ToolCall) else ToolCall(**c) for c in data.pop("tool_calls", [])]
        return cls(tool_calls=calls, **data)

    def pieces(self, text: str) -> list[str]:
        size = max(1, self.chunk_size)
        return [text[i : i + size] for i in range(0, len(text), size)]

    def normalised_usage(self, prompt_chars: int) -> dict[str, int]:
        if self.usage is not None:
            return {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0, **self.usage}
        output = max(1, (len(self.text) + len(self.thinking)) // 4) if (self.text or self.thinking) else 1
        return {"input": max(1, prompt_chars // 4), "output": output, "cache_read": 0, "cache_write": 0}

    def final_reason(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_calls else "end_turn")


def _call_id(call: ToolCall, index: int, prefix: str) -> str:
    return call.id or f"{prefix}_{index}"


def _args_json(call: ToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# -- OpenAI Chat Completions ------------------------------------------------------------------------
OPENAI_FINISH = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length", "stop_sequence": "stop",
                 "content_filtered": "content_filter"}


def openai_usage(u: dict[str, int]) -> dict[str, Any]:
    return {"prompt_tokens": u["input"], "completion_tokens": u["output"], "total_tokens": u["input"] + u["output"],
            "prompt_tokens_details": {"cached_tokens": u["cache_read"]}}


def openai_body(script: Script, model: str, usage: dict[str, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text or None}
    if script.thinking:
        message["reasoning_content"] = script.thinking
    if script.tool_calls:
        message["tool_calls"] = [
            {"id": _call_id(c, i, "call"), "type": "function", "function": {"name": c.name, "arguments": _args_json(c)}}
            for i, c in enumerate(script.tool_calls)
        ]
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": OPENAI_FINISH[script.final_reason()]}],
            "usage": openai_usage(usage)}


def openai_stream(script: Script, model: str, usage: dict[str, int], include_usage: bool) -> Iterator[bytes]:
    head = f'data: {{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":{int(time.time())},' \
           f'"model":{json.dumps(model)},"choices":[{{"index":0,"delta":'.encode()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return head + _dumps(delta) + b',"finish_reason":' + _dumps(finish) + b"}]}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in script.pieces(script.thinking):
        yield chunk({"reasoning_content": piece})
    for piece in script.pieces(script.text):
        yield chunk({"content": piece})
    for index, call in enumerate(script.tool_calls):
        yield chunk({"tool_calls": [{"index": index, "id": _call_id(call, index, "call"), "type": "function",
                                     "function": {"name": call.name, "arguments": ""}}]})
        for piece in script.pieces(_args_json(call)):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, OPENAI_FINISH[script.final_reason()])
    if include_usage:
        yield b"data: " + _dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                                  "choices": [], "usage": openai_usage(usage)}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def openai_error(fault: str, message: str) -> dict[str, Any]:
    kinds = {"rate_limit": ("requests", "rate_limit_exceeded"), "auth": ("invalid_request_error", "invalid_api_key"),
             "model_not_found": ("invalid_request_error", "model_not_found"),
             "context_too_long": ("invalid_request_error", "context_length_exceeded")}
    kind, code = kinds.get(fault, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# -- Anthropic Messages --------------------------------------------------------------------------------
def anthropic_usage(u: dict[str, int]) -> dict[str, int]:
    return {"input_tokens": u["input"] - u["cache_read"] - u["cache_write"], "output_tokens": u["output"],
            "cache_creation_input_tokens": u["cache_write"], "cache_read_input_tokens": u["cache_read"]}


def anthropic_body(script: Script, model: str, usage: dict[str, int]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if script.thinking:
        content.append({"type": "thinking", "thinking": script.thinking, "signature": "sig-fake"})
    if script.text:
        content.append({"type": "text", "text": script.text})
    for index, call in enumerate(script.tool_calls):
        content.append({"type": "tool_use", "id": _call_id(call, index, "toolu"), "name": call.name,
                        "input": call.arguments})
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": script.final_reason() if script.final_reason() != "content_filtered" else "refusal",
            "stop_sequence": None, "usage": anthropic_usage(usage)}


def anthropic_stream(script: Script, model: str, usage: dict[str, int]) -> Iterator[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _dumps({"type": name, **data}) + b"\n\n"

    start_usage = {**anthropic_usage(usage), "output_tokens": 1}
    yield event("message_start", {"message": {"id": "msg_fake", "type": "message", "role": "assistant",
                                              "model": model, "content": [], "stop_reason": None,
                                              "stop_sequence": None, "usage": start_usage}})
    yield event("ping", {})
    index = 0
    if script.thinking:
        yield event("content_block_start", {"index": index, "content_block": {"type": "thinking", "thinking": ""}})
        for piece in script.pieces(script.thinking):
            yield event("content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}})
        yield event("content_block_delta", {"index": index, "delta": {"type": "signature_delta", "signature": "sig"}})
        yield event("content_block_stop", {"index": index})
        index += 1
    if script.text:
        yield event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        for piece in script.pieces(script.text):
            yield event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
        yield event("content_block_stop", {"index": index})
        index += 1
    for number, call in enumerate(script.tool_calls):
        block = {"type": "tool_use", "id": _call_id(call, number, "toolu"), "name": call.name, "input": {}}
        yield event("content_block_start", {"index": index, "content_block": block})
        for piece in script.pieces(_args_json(call)):
            yield event("content_block_delta", {"index": index,
                                                "delta": {"type": "input_json_delta", "partial_json": piece}})
        yield event("content_block_stop", {"index": index})
        index += 1
    reason = script.final_reason() if script.final_reason() != "content_filtered" else "refusal"
    yield event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": None},
                                  "usage": {"output_tokens": usage["output"]}})
    yield event("message_stop", {})


def anthropic_error(fault: str, message: str) -> dict[str, Any]:
    kinds = {"rate_limit": "rate_limit_error", "overloaded": "overloaded_error", "auth": "authentication_error",
             "model_not_found": "not_found_error", "context_too_long": "invalid_request_error"}
    return {"type": "error", "error": {"type": kinds.get(fault, "api_error"), "message": message}}


# -- Gemini generateContent ------------------------------------------------------------------------------
GEMINI_FINISH = {"end_turn": "STOP", "tool_use": "STOP", "max_tokens": "MAX_TOKENS", "stop_sequence": "STOP",
                 "content_filtered": "SAFETY"}


def gemini_usage(u: dict[str, int]) -> dict[str, int]:
    return {"promptTokenCount": u["input"], "candidatesTokenCount": u["output"],
            "totalTokenCount": u["input"] + u["output"], "cachedContentTokenCount": u["cache_read"]}


def _gemini_call_parts(script: Script) -> list[dict[str, Any]]:
    return [{"functionCall": {"name": c.name, "args": c.arguments}} for c in script.tool_calls]


def gemini_body(script: Script, model: str, usage: dict[str, int]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if script.thinking:
        parts.append({"text": script.thinking, "thought": True})
    if script.text:
        parts.append({"text": script.text})
    parts += _gemini_call_parts(script)
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": GEMINI_FINISH[script.final_reason()], "index": 0}],
            "usageMetadata": gemini_usage(usage), "modelVersion": model}


def gemini_stream(script: Script, model: str, usage: dict[str, int]) -> Iterator[bytes]:
    def event(parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return b"data: " + _dumps({"candidates": [candidate], "usageMetadata": gemini_usage(usage),
                                   "modelVersion": model}) + b"\r\n\r\n"

    for piece in script.pieces(script.thinking):
        yield event([{"text": piece, "thought": True}])
    for piece in script.pieces(script.text):
        yield event([{"text": piece}])
    calls = _gemini_call_parts(script)
    if calls:
        yield event(calls)
    yield event([{"text": ""}], GEMINI_FINISH[script.final_reason()])


def gemini_error(fault: str, message: str, status: int) -> dict[str, Any]:
    statuses = {"rate_limit": "RESOURCE_EXHAUSTED", "overloaded": "UNAVAILABLE", "auth": "UNAUTHENTICATED",
                "model_not_found": "NOT_FOUND", "context_too_long": "INVALID_ARGUMENT"}
    error: dict[str, Any] = {"code": status, "message": message, "status": statuses.get(fault, "INTERNAL")}
    if fault == "rate_limit":
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    return {"error": error}


# -- Ollama /api/chat -------------------------------------------------------------------------------------------
OLLAMA_DONE = {"end_turn": "stop", "tool_use": "stop", "max_tokens": "length", "stop_sequence": "stop",
               "content_filtered": "stop"}


def _ollama_line(model: str, message: dict[str, Any], done: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "message": {"role": "assistant", **message}, "done": done, **extra}


def _ollama_final(script: Script, model: str, usage: dict[str, int], message: dict[str, Any]) -> dict[str, Any]:
    return _ollama_line(model, message, True, done_reason=OLLAMA_DONE[script.final_reason()],
                        total_duration=1000, load_duration=10, prompt_eval_count=usage["input"],
                        prompt_eval_duration=100, eval_count=usage["output"], eval_duration=800)


def _ollama_calls(script: Script) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in script.tool_calls]


def ollama_body(script: Script, model: str, usage: dict[str, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"content": script.text}
    if script.thinking:
        message["thinking"] = script.thinking
    if script.tool_calls:
        message["tool_calls"] = _ollama_calls(script)
    return _ollama_final(script, model, usage, message)


def ollama_stream(script: Script, model: str, usage: dict[str, int]) -> Iterator[bytes]:
    for piece in script.pieces(script.thinking):
        yield _dumps(_ollama_line(model, {"content": "", "thinking": piece})) + b"\n"
    for piece in script.pieces(script.text):
        yield _dumps(_ollama_line(model, {"content": piece})) + b"\n"
    if script.tool_calls:
        yield _dumps(_ollama_line(model, {"content": "", "tool_calls": _ollama_calls(script)})) + b"\n"
    yield _dumps(_ollama_final(script, model, usage, {"content": ""})) + b"\n"


def ollama_error(fault: str, message: str) -> dict[str, Any]:
    return {"error": message}


# -- malformed events, per format ----------------------------------------------------------------------------------
MALFORMED = {
    "openai": b'data: {"id":"chatcmpl-fake","choices":[{"delta":{"content":"brok\n\n',
    "anthropic": b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{\n\n',
    "gemini": b'data: {"candidates":[{"content":\r\n\r\n',
    "ollama": b'{"model":"x","message":{"content":"brok\n',
}

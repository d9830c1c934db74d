"""Anthropic Messages driver: request translation and stream events (fake server, real HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from librefang_providers.api import (
    CompletionRequest,
    ImageBlock,
    Message,
    Overloaded,
    ResponseFormat,
    TextBlock,
    ThinkingBlock,
    ToolDefinition,
    ToolResultBlock,
    ToolUseBlock,
)

from .conftest import TEST_KEY


def conversation(**kw: Any) -> CompletionRequest:
    return CompletionRequest(
        model="fake-model",
        system="You are terse.",
        messages=[
            Message("user", [TextBlock("Look"), ImageBlock(media_type="image/jpeg", data="/9j/4AAQ")]),
            Message("assistant", [ThinkingBlock("plan", signature="sig-1"), ThinkingBlock("unsigned"),
                                  ToolUseBlock("toolu_1", "get_weather", {"city": "Oslo"})]),
            Message("user", [ToolResultBlock("toolu_1", "no such city", is_error=True)]),
        ],
        tools=[ToolDefinition("get_weather", "Weather", {"type": "object"})],
        max_tokens=256, temperature=0.5, stop=["###"], **kw,
    )


async def test_request_translation(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="ok")
    await make_driver("anthropic").complete(conversation(thinking_budget=1024))
    sent = fake_llm.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == TEST_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    body = sent.body
    assert body["system"] == "You are terse."
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "plan", "signature": "sig-1"},  # unsigned thinking is not sent back
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city", "is_error": True}]},
    ]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    assert body["max_tokens"] == 256 and body["temperature"] == 0.5 and body["stop_sequences"] == ["###"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_json_response_format_becomes_a_system_instruction(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="{}")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    await make_driver("anthropic").complete(conversation(response_format=ResponseFormat("json_schema", schema)))
    system = fake_llm.requests[-1].body["system"]
    assert system.startswith("You are terse.") and json.dumps(schema) in system


async def test_signed_thinking_round_trips(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(thinking="deep thought", text="42")
    response = await make_driver("anthropic").complete(conversation())
    thinking = [b for b in response.content if isinstance(b, ThinkingBlock)]
    assert thinking[0].text == "deep thought" and thinking[0].signature == "sig-fake"


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


async def test_error_event_mid_stream(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(raw_events=[
        _event("message_start", {"message": {"model": "m", "usage": {"input_tokens": 3}}}),
        _event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ])
    with pytest.raises(Overloaded):
        [e async for e in make_driver("anthropic").stream(conversation())]


async def test_crlf_line_endings_and_comments(fake_llm: Any, make_driver: Any) -> None:
    events = [
        _event("message_start", {"message": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ": keep-alive comment\n\n",
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hé"}}),
        _event("content_block_stop", {"index": 0}),
        _event("message_delta", {"delta": {"stop_reason": "stop_sequence"}, "usage": {"output_tokens": 2}}),
        _event("message_stop", {}),
    ]
    fake_llm.script(raw_events=[e.replace("\n", "\r\n") for e in events], byte_chunk=3)
    got = [e async for e in make_driver("anthropic").stream(conversation())]
    assert got[0].text == "hé"
    assert got[-1].stop_reason == "stop_sequence" and got[-1].usage.output_tokens == 2

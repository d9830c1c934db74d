"""OpenAI Chat Completions driver: request translation and stream quirks (fake server, real HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from librefang_providers.api import (
    BadResponse,
    CompletionRequest,
    ImageBlock,
    Message,
    Overloaded,
    ResponseFormat,
    TextBlock,
    TextDelta,
    ToolDefinition,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseEnd,
)
from librefang_providers.drivers.openai import OpenAIDriver
from librefang_providers.types import DriverConfig

from tests.fakes.llm_server import Script

from .conftest import TEST_KEY


def conversation() -> CompletionRequest:
    return CompletionRequest(
        model="fake-model",
        system="You are terse.",
        messages=[
            Message("user", [TextBlock("What is in this picture, and the weather?"),
                             ImageBlock(media_type="image/png", data="iVBORw0KGgo=")]),
            Message("assistant", [TextBlock("Checking."), ToolUseBlock("call_1", "get_weather", {"city": "Oslo"})]),
            Message("user", [ToolResultBlock("call_1", "Snow, -3°C"), TextBlock("And tomorrow?")]),
        ],
        tools=[ToolDefinition("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})],
        max_tokens=300, temperature=0.2, stop=["END"],
        response_format=ResponseFormat("json_schema", {"type": "object"}, "answer"),
        extra_body={"seed": 7},
    )


async def test_request_translation(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="ok")
    await make_driver("openai").complete(conversation())
    sent = fake_llm.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {TEST_KEY}"
    body = sent.body
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture, and the weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Snow, -3°C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    # A compatible provider (not "openai" itself) gets the classic max_tokens.
    assert body["max_tokens"] == 300 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.2 and body["stop"] == ["END"] and body["seed"] == 7
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    assert "stream" not in body


async def test_openai_itself_gets_max_completion_tokens_and_usage_in_streams(fake_llm: Any) -> None:
    driver = OpenAIDriver(DriverConfig(provider="openai", base_url=fake_llm.base_url("openai"), api_key=TEST_KEY))
    try:
        fake_llm.script(text="ok")
        events = [e async for e in driver.stream(conversation())]
    finally:
        await driver.aclose()
    body = fake_llm.requests[-1].body
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert events[-1].usage.input_tokens > 0


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"


async def test_interleaved_tool_call_deltas_are_joined_by_index(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(raw_events=[
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "one", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "two", "arguments": '{"y"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': [1, 2]}'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"é"}'}}]}),
        _chunk({}, "tool_calls"),
        "data: [DONE]\n\n",
    ])
    events = [e async for e in make_driver("openai").stream(conversation())]
    ends = [(e.id, e.name, e.input) for e in events if isinstance(e, ToolUseEnd)]
    assert ends == [("a", "one", {"x": "é"}), ("b", "two", {"y": [1, 2]})]
    assert events[-1].stop_reason == "tool_use"


async def test_reasoning_content_and_compatible_stop_after_tools(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(raw_events=[
        _chunk({"reasoning_content": "thinking..."}),
        _chunk({"content": "Hi"}),
        _chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]}),
        _chunk({}, "stop"),  # some compatible servers say "stop" after tool calls
    ])  # and no [DONE]: finish_reason is enough
    events = [e async for e in make_driver("openai").stream(conversation())]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi"]
    assert events[-1].stop_reason == "tool_use"


async def test_error_object_inside_stream(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(raw_events=[_chunk({"content": "par"}),
                                'data: {"error": {"message": "server overloaded", "type": "server_overloaded"}}\n\n'])
    with pytest.raises(Overloaded):
        [e async for e in make_driver("openai").stream(conversation())]


async def test_stream_ending_without_finish_is_bad_response(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(raw_events=[_chunk({"content": "half an ans"})])
    with pytest.raises(BadResponse) as info:
        [e async for e in make_driver("openai").stream(conversation())]
    assert info.value.partial_text == "half an ans"


async def test_invalid_tool_arguments_are_bad_response(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(Script(raw_events=[
        _chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": '{"a": '}}]}),
        _chunk({}, "tool_calls"), "data: [DONE]\n\n"]))
    with pytest.raises(BadResponse, match="not valid JSON"):
        [e async for e in make_driver("openai").stream(conversation())]


async def test_no_key_no_authorization_header(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="local")
    response = await make_driver("openai", api_key="").complete(conversation())
    assert response.text == "local"
    assert "authorization" not in fake_llm.requests[-1].headers

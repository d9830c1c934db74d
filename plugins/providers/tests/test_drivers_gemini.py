"""Gemini driver: request translation, key handling and stream events (fake server, real HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from librefang_providers.api import (
    CompletionRequest,
    ImageBlock,
    Message,
    RateLimited,
    ResponseFormat,
    TextBlock,
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
            Message("user", [TextBlock("Weather?"), ImageBlock(media_type="image/png", data="AAAA")]),
            Message("assistant", [ToolUseBlock("call_0", "get_weather", {"city": "Oslo"}, signature="ts-1")]),
            Message("user", [ToolResultBlock("call_0", "Snow")]),  # no name: looked up from the tool_use
        ],
        tools=[ToolDefinition("get_weather", "Weather", {"type": "object", "additionalProperties": False})],
        max_tokens=128, temperature=0.0, stop=["STOP"], **kw,
    )


async def test_request_translation_and_key_in_header_not_url(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="ok", chunk_size=1)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    events = [e async for e in make_driver("gemini").stream(conversation(
        response_format=ResponseFormat("json_schema", schema)))]
    assert events[-1].stop_reason == "end_turn"
    sent = fake_llm.requests[-1]
    assert sent.path == "/v1beta/models/fake-model:streamGenerateContent" and sent.query == {"alt": ["sse"]}
    assert sent.headers["x-goog-api-key"] == TEST_KEY
    assert TEST_KEY not in sent.path and "key" not in sent.query
    body = sent.body
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather?"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                                     "thoughtSignature": "ts-1"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "Snow"}}}]},
    ]
    assert body["generationConfig"] == {"maxOutputTokens": 128, "temperature": 0.0, "stopSequences": ["STOP"],
                                        "responseMimeType": "application/json", "responseJsonSchema": schema}
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather",
        "parametersJsonSchema": {"type": "object", "additionalProperties": False}}]}]


async def test_complete_uses_generate_content(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="ok")
    response = await make_driver("gemini").complete(conversation())
    assert response.text == "ok"
    assert fake_llm.requests[-1].path == "/v1beta/models/fake-model:generateContent"


async def test_retry_delay_from_error_details(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(fault="rate_limit", retry_after=None)  # Gemini sends RetryInfo, not a header
    with pytest.raises(RateLimited) as info:
        await make_driver("gemini").complete(conversation())
    assert info.value.retry_after == 1.0


async def test_safety_finish_is_content_filtered(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="I can", stop_reason="content_filtered")
    events = [e async for e in make_driver("gemini").stream(conversation())]
    assert events[-1].stop_reason == "content_filtered"


async def test_function_call_ids_and_signatures_from_the_provider(fake_llm: Any, make_driver: Any) -> None:
    part = {"functionCall": {"id": "fc-9", "name": "f", "args": {"k": 1}}, "thoughtSignature": "sig-z"}
    event = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}]}
    fake_llm.script(raw_events=["data: " + json.dumps(event) + "\n\n"])
    events = [e async for e in make_driver("gemini").stream(conversation())]
    end = [e for e in events if e.type == "tool_use_end"][0]
    assert (end.id, end.input, end.signature) == ("fc-9", {"k": 1}, "sig-z")
    assert events[-1].stop_reason == "tool_use"

"""Ollama native driver: request translation and NDJSON streams (fake server, real HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from librefang_providers.api import (
    BadResponse,
    CompletionRequest,
    ImageBlock,
    Message,
    ModelNotFound,
    ResponseFormat,
    TextBlock,
    ToolDefinition,
    ToolResultBlock,
    ToolUseBlock,
)
from librefang_providers.drivers.ollama import OllamaDriver
from librefang_providers.types import DriverConfig


def conversation(**kw: Any) -> CompletionRequest:
    return CompletionRequest(
        model="fake-model",
        system="You are terse.",
        messages=[
            Message("user", [TextBlock("Describe"), ImageBlock(media_type="image/png", data="QUJD")]),
            Message("assistant", [ToolUseBlock("call_0", "lookup", {"q": "x"})]),
            Message("user", [ToolResultBlock("call_0", "found")]),
        ],
        tools=[ToolDefinition("lookup", "Look up", {"type": "object"})],
        max_tokens=64, temperature=0.1, stop=["\n\n"], **kw,
    )


async def test_request_translation(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(text="ok")
    await make_driver("ollama", api_key="").complete(conversation(response_format=ResponseFormat("json")))
    sent = fake_llm.requests[-1]
    assert sent.path == "/api/chat" and "authorization" not in sent.headers
    body = sent.body
    assert body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Describe", "images": ["QUJD"]},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "lookup", "arguments": {"q": "x"}}}]},
        {"role": "tool", "content": "found", "tool_name": "lookup"},
    ]
    assert body["options"] == {"num_predict": 64, "temperature": 0.1, "stop": ["\n\n"]}
    assert body["format"] == "json"
    assert body["tools"] == [{"type": "function", "function": {"name": "lookup", "description": "Look up",
                                                               "parameters": {"type": "object"}}}]


async def test_openai_style_base_url_is_mapped_to_the_native_api(fake_llm: Any) -> None:
    driver = OllamaDriver(DriverConfig(provider="ollama", base_url=fake_llm.url + "/v1"))
    try:
        fake_llm.script(text="native")
        events = [e async for e in driver.stream(conversation())]
    finally:
        await driver.aclose()
    assert fake_llm.requests[-1].path == "/api/chat" and fake_llm.requests[-1].body["stream"] is True
    assert "".join(e.text for e in events if e.type == "text_delta") == "native"


async def test_missing_model_error(fake_llm: Any, make_driver: Any) -> None:
    fake_llm.script(fault="model_not_found")
    with pytest.raises(ModelNotFound, match="does not exist"):
        await make_driver("ollama").complete(conversation())


async def test_error_line_mid_stream_and_missing_done(fake_llm: Any, make_driver: Any) -> None:
    line = json.dumps({"model": "m", "message": {"role": "assistant", "content": "a"}, "done": False}) + "\n"
    fake_llm.script(raw_events=[line, '{"error": "model runner has unexpectedly stopped"}\n'])
    with pytest.raises(Exception, match="unexpectedly stopped"):
        [e async for e in make_driver("ollama").stream(conversation())]
    fake_llm.script(raw_events=[line])
    with pytest.raises(BadResponse, match="before the provider finished"):
        [e async for e in make_driver("ollama").stream(conversation())]


async def test_string_arguments_are_parsed(fake_llm: Any, make_driver: Any) -> None:
    msg = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": '{"n": 2}'}}]}
    lines = [json.dumps({"model": "m", "message": msg, "done": False}) + "\n",
             json.dumps({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                         "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2}) + "\n"]
    fake_llm.script(raw_events=lines)
    events = [e async for e in make_driver("ollama").stream(conversation())]
    assert [e.input for e in events if e.type == "tool_use_end"] == [{"n": 2}]
    assert events[-1].stop_reason == "tool_use" and events[-1].usage.input_tokens == 5

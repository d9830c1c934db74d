"""The stored JSON of messages: orjson writes flat content byte for byte as the stdlib would, anything
else (tool inputs with floats, NaN, big ints) keeps the stdlib's output, and what a write puts in the
window cache equals what a read of the database decodes."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from librefang_providers.api import Message, ToolUseBlock
from librefang_runtime.history import content_to_json, encode_content

from tests.fakes.llm_server import Script, ToolCall


def _stdlib(content: Any) -> str:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def test_flat_content_is_written_as_the_stdlib_writes_it_for_every_code_point() -> None:
    # every code point but the surrogates, in chunks (control characters, quotes, backslash, DEL,
    # U+2028/2029, non-BMP characters...)
    points = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 4096):
        text = "".join(map(chr, points[start:start + 4096]))
        content = [{"type": "text", "text": text}, {"type": "thinking", "thinking": text, "signature": None},
                   {"type": "tool_result", "tool_use_id": "t1", "tool_name": "x", "content": text, "is_error": True}]
        assert encode_content(content) == _stdlib(content)


def test_what_orjson_refuses_or_writes_differently_keeps_the_stdlib_output() -> None:
    lone = [{"type": "text", "text": "half a pair: \ud800"}]  # orjson refuses lone surrogates
    assert encode_content(lone) == _stdlib(lone)
    tool = content_to_json(Message("assistant", [ToolUseBlock("t1", "calc", {
        "x": 1e16, "y": 0.1, "nan": math.nan, "inf": -math.inf, "big": 2 ** 70, "nested": {"1": [1.5, None, True]}})]))
    written = encode_content(tool)
    assert written == _stdlib(tool)
    assert '"x":1e+16' in written and '"nan":NaN' in written  # what orjson would have written as 1e16 / null
    decoded = json.loads(written)[0]["input"]
    assert math.isnan(decoded["nan"]) and decoded["big"] == 2 ** 70


async def test_the_window_gets_what_a_read_decodes(runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    store = kernel.services["runtime"].store
    agent_id = await spawn(kernel, "jsonish")
    fake_llm.script(Script(text="first"))
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "start"})
    session_id = (await response.get_json())["session_id"]
    assert store.windows.get(session_id, 60) is not None  # the session is cached: writes extend it
    fake_llm.script(Script(tool_calls=[ToolCall("system_time", {"x": 0.1, "big": 1e16, "text": "é \u2028 😀",
                                                                "nested": {"k": [1.5, None, True]}}, id="t1")]),
                    Script(text="answer é ✓ 😀 \u2028 \x00 \"quoted\" \\"))
    response = await client.post(f"/api/agents/{agent_id}/message",
                                 json={"message": "plain text é ✓ 😀 \u2028 \"quoted\" \\", "session_id": session_id})
    assert response.status_code == 200
    window = store.windows.get(session_id, 60)
    stored = await store.load(session_id)
    assert [(s.message, s.created_at) for s in window.items] == [(s.message, s.created_at) for s in stored]
    assert stored[3].message.blocks()[0].input == {"x": 0.1, "big": 1e16, "text": "é \u2028 😀",
                                                   "nested": {"k": [1.5, None, True]}}
    assert stored[-1].message.blocks()[0].text.startswith("answer é ✓ 😀")

"""The OpenAI driver's one-pass ``build_messages`` writes exactly the messages the straightforward
conversion (below, as it was before) writes, on a history with every kind of block."""

from __future__ import annotations

import json
from typing import Any

from librefang_providers.drivers.openai import build_messages
from librefang_providers.types import (
    CompletionRequest,
    ImageBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)


def reference(request: CompletionRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        if message.role == "assistant":
            text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
            calls = [{"id": b.id, "type": "function",
                      "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}}
                     for b in message.content if isinstance(b, ToolUseBlock)]
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
            continue
        parts: list[dict[str, Any]] = []
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                content = f"Error: {block.content}" if block.is_error else block.content
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
            elif isinstance(block, TextBlock):
                parts.append({"type": "text", "text": block.text})
            elif isinstance(block, ImageBlock):
                url = block.url or f"data:{block.media_type};base64,{block.data}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
        if parts:
            if all(p["type"] == "text" for p in parts):
                out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
            else:
                out.append({"role": "user", "content": parts})
    return out


HISTORY = [
    Message("user", "plain text"),
    Message("user", [TextBlock("a "), TextBlock("b")]),
    Message("user", [TextBlock("")]),
    Message("user", []),
    Message("assistant", [ThinkingBlock("hmm"), TextBlock("Let me look. "), TextBlock("Both."),
                          ToolUseBlock("c1", "weather", {"city": "Zürich", "days": [1, 2], "nested": {"x": None}}),
                          ToolUseBlock("c2", "time", {})]),
    Message("user", [ToolResultBlock("c1", "Snow, -3°C"), ToolResultBlock("c2", "boom", is_error=True),
                     TextBlock("And tomorrow?")]),
    Message("assistant", [ToolUseBlock("c3", "search", {"q": "\u2603 \"quoted\" \\ back"})]),
    Message("user", [ToolResultBlock("c3", "")]),
    Message("user", [TextBlock("Look "), ImageBlock(media_type="image/png", data="iVBORw0KGgo="),
                     ToolResultBlock("c4", "late"), TextBlock("here"), ImageBlock(url="https://example.com/a.png")]),
    Message("assistant", [ThinkingBlock("only thinking")]),
    Message("assistant", "a string answer"),
    Message("system", "a system note"),
    # one text block (the fast path), with and without text, in every role
    Message("assistant", [TextBlock("solo")]),
    Message("assistant", [TextBlock("")]),
    Message("user", [TextBlock("one block")]),
    Message("system", [TextBlock("a note as blocks")]),
]


def test_build_messages_matches_the_reference_conversion() -> None:
    for system in ("Be brief.", ""):
        request = CompletionRequest(model="m", messages=HISTORY, system=system)
        got = build_messages(request)
        assert got == reference(request)
        # the tool arguments are the same text, not only the same JSON value
        assert [c["function"]["arguments"] for m in got for c in m.get("tool_calls", ())] == [
            json.dumps(b.input, ensure_ascii=False) for m in HISTORY if not isinstance(m.content, str)
            for b in m.content if isinstance(b, ToolUseBlock)]

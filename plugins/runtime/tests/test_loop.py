"""The agent loop against the fake provider server over real HTTP: text, streaming, tool calls,
loop guard, max iterations, empty replies, NO_REPLY, provider errors and retries, history repair."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from librefang_providers.api import (
    ContentComplete,
    Message,
    TextDelta,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseEnd,
    ToolUseStart,
    UpstreamError,
)
from librefang_runtime.loop import EMPTY_REPLY_NUDGE, MaxIterationsExceeded, PhaseChange, ToolExecuted
from librefang_runtime.tools import Deny, Tool

from tests.fakes.llm_server import Script, ToolCall


def user(text: str) -> Message:
    return Message("user", text)


def sent_messages(fake: Any, index: int = -1) -> list[dict[str, Any]]:
    return fake.requests[index].body["messages"]


async def test_plain_text_reply(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(text="Hello there, human.", usage={"input": 12, "output": 4}))
    loop, committed = make_loop(system_prompt="Be brief.")
    result = await loop.run([], user("hi"))
    assert result.response == "Hello there, human." and not result.silent
    assert result.iterations == 1
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 4)
    assert (result.provider, result.model) == ("openai", "fake-model")
    assert [m.role for m in committed] == ["user", "assistant"]
    body = fake_llm.requests[0].body
    assert body["stream"] is True
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][-1]["content"] == "hi"
    assert [t["function"]["name"] for t in body["tools"]] == [
        "agent_list", "agent_send", "agent_spawn", "apply_patch", "file_delete", "file_list", "file_read",
        "file_write", "system_time", "web_fetch"]


async def test_streaming_events_in_order(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(text="abcdefghij", chunk_size=3))
    events: list[Any] = []
    loop, _ = make_loop(events=events)
    result = await loop.run([], user("stream please"))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["abc", "def", "ghi", "j"]
    assert isinstance(events[-1], PhaseChange) and events[-1].phase == "response_complete"
    assert sum(isinstance(e, ContentComplete) for e in events) == 1
    assert result.response == "abcdefghij"


async def test_one_tool_call_then_answer(fake_llm: Any, make_loop: Any, tmp_path: Any) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "notes.txt").write_text("the secret word is papaya")
    fake_llm.script(
        Script(text="Let me look.", tool_calls=[ToolCall("file_read", {"path": "notes.txt"}, id="call_a")],
               usage={"input": 10, "output": 3}),
        Script(text="The word is papaya.", usage={"input": 20, "output": 5}),
    )
    events: list[Any] = []
    loop, committed = make_loop(events=events)
    result = await loop.run([], user("what is the word?"))
    assert result.response == "The word is papaya."
    assert result.iterations == 2
    assert (result.usage.input_tokens, result.usage.output_tokens) == (30, 8)
    # committed: user, assistant{tool_use}, user{tool_result}, assistant text
    assert [m.role for m in committed] == ["user", "assistant", "user", "assistant"]
    call = [b for b in committed[1].blocks() if isinstance(b, ToolUseBlock)][0]
    assert (call.id, call.name, call.input) == ("call_a", "file_read", {"path": "notes.txt"})
    outcome = committed[2].blocks()[0]
    assert isinstance(outcome, ToolResultBlock) and outcome.tool_use_id == "call_a"
    assert outcome.content == "the secret word is papaya" and not outcome.is_error
    # the second request carried the tool result back in OpenAI's format
    second = sent_messages(fake_llm)
    assert second[-1] == {"role": "tool", "tool_call_id": "call_a", "content": "the secret word is papaya"}
    assert second[-2]["tool_calls"][0]["function"]["name"] == "file_read"
    kinds = [type(e) for e in events]
    assert ToolUseStart in kinds and ToolUseEnd in kinds and ToolExecuted in kinds
    trace = result.decision_traces[0]
    assert trace["tool_name"] == "file_read" and trace["is_error"] is False and trace["iteration"] == 1
    assert trace["rationale"] == "Let me look."


async def test_many_tool_calls_in_one_reply_and_across_replies(fake_llm: Any, make_loop: Any, tmp_path: Any) -> None:
    fake_llm.script(
        Script(tool_calls=[ToolCall("file_write", {"path": "a.txt", "content": "A"}, id="w1"),
                           ToolCall("file_write", {"path": "sub/b.txt", "content": "BB"}, id="w2")]),
        Script(tool_calls=[ToolCall("file_list", {"path": "."}, id="l1"), ToolCall("system_time", {}, id="t1")]),
        Script(text="Done: two files."),
    )
    loop, committed = make_loop()
    result = await loop.run([], user("write two files"))
    assert result.response == "Done: two files." and result.iterations == 3
    assert (tmp_path / "workspace" / "a.txt").read_text() == "A"
    assert (tmp_path / "workspace" / "sub" / "b.txt").read_text() == "BB"
    listing = committed[4].blocks()[0]
    assert isinstance(listing, ToolResultBlock) and "a.txt (1 bytes)" in listing.content and "sub/" in listing.content
    assert "UTC" in committed[4].blocks()[1].content
    assert len(result.decision_traces) == 4
    # each tool turn is committed as assistant{tool_use…} then user{tool_result…}
    assert [m.role for m in committed] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert len(sent_messages(fake_llm, 1)) == 1 + 1 + 2  # user, assistant, two tool results (no system prompt)


async def test_tool_errors_reach_the_model(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(
        Script(tool_calls=[ToolCall("file_read", {"path": "../../etc/passwd"}, id="c1"),
                           ToolCall("file_read", {}, id="c2"),
                           ToolCall("no_such_tool", {}, id="c3")]),
        Script(text="I could not read it."),
    )
    loop, committed = make_loop()
    result = await loop.run([], user("read /etc/passwd"))
    results = committed[2].blocks()
    assert all(isinstance(r, ToolResultBlock) and r.is_error for r in results)
    assert "'..' is not allowed" in results[0].content
    assert "missing required parameter 'path'" in results[1].content
    assert "unknown tool 'no_such_tool'" in results[2].content
    assert result.response == "I could not read it."


async def test_loop_guard_warns_at_three_and_blocks_at_five(fake_llm: Any, make_loop: Any) -> None:
    calls: list[dict[str, Any]] = []

    def ping(data: dict[str, Any], _ctx: Any) -> str:
        calls.append(data)
        return "pong"

    tool = Tool("ping", "Ping.", ping, {"type": "object", "properties": {"n": {"type": "integer"}}})
    fake_llm.script(*[Script(tool_calls=[ToolCall("ping", {"n": 1}, id=f"p{i}")]) for i in range(6)],
                    Script(text="giving up"))
    loop, committed = make_loop(tools=[tool])
    result = await loop.run([], user("ping forever"))
    outputs = [m.blocks()[0].content for m in committed if m.role == "user" and isinstance(m.blocks()[0], ToolResultBlock)]
    assert len(outputs) == 6
    assert outputs[0] == "pong" and outputs[1] == "pong"
    assert "loop guard" in outputs[2] and outputs[2].startswith("pong")
    assert "loop guard" in outputs[3]
    assert outputs[4].startswith("blocked by the loop guard") and outputs[5].startswith("blocked")
    assert len(calls) == 4  # the 5th and 6th identical calls never ran
    assert result.response == "giving up"


async def test_loop_guard_ignores_different_inputs(fake_llm: Any, make_loop: Any) -> None:
    tool = Tool("ping", "Ping.", lambda d, c: f"pong {d['n']}", {"type": "object", "properties": {"n": {"type": "integer"}}})
    fake_llm.script(*[Script(tool_calls=[ToolCall("ping", {"n": i}, id=f"p{i}")]) for i in range(6)],
                    Script(text="ok"))
    loop, committed = make_loop(tools=[tool])
    await loop.run([], user("go"))
    outputs = [m.blocks()[0].content for m in committed[2::2] if m.role == "user"]
    assert outputs == [f"pong {i}" for i in range(6)]


async def test_max_iterations(fake_llm: Any, make_loop: Any) -> None:
    tool = Tool("step", "Step.", lambda d, c: "ok", {"type": "object", "properties": {"n": {"type": "integer"}}})
    fake_llm.script(*[Script(text=f"step {i}", tool_calls=[ToolCall("step", {"n": i}, id=f"s{i}")]) for i in range(10)])
    loop, committed = make_loop(tools=[tool], max_iterations=4)
    with pytest.raises(MaxIterationsExceeded) as info:
        await loop.run([], user("never stop"))
    assert info.value.iterations == 4
    assert len(fake_llm.requests) == 4
    assert info.value.result.usage.output_tokens > 0
    # the session is left consistent: every tool_use has its result
    assert [m.role for m in committed] == ["user"] + ["assistant", "user"] * 4


async def test_empty_reply_gets_one_corrective_retry(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(text=""), Script(text="Sorry, here is my answer."))
    events: list[Any] = []
    loop, committed = make_loop(events=events)
    result = await loop.run([], user("question"))
    assert result.response == "Sorry, here is my answer." and result.iterations == 2
    retry = sent_messages(fake_llm)
    assert retry[-1]["role"] == "user" and EMPTY_REPLY_NUDGE in str(retry[-1]["content"])
    # the nudge is not stored
    assert [m.role for m in committed] == ["user", "assistant"]
    assert any(isinstance(e, PhaseChange) and e.phase == "retrying" for e in events)


async def test_empty_twice_reports_without_inventing_text(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(text=""), Script(text=""))
    loop, committed = make_loop()
    result = await loop.run([], user("question"))
    assert len(fake_llm.requests) == 2
    assert result.response.startswith("[The agent completed processing but returned no text response.")
    assert [m.role for m in committed] == ["user"]


async def test_no_reply_is_silent(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(text="NO_REPLY"))
    loop, _ = make_loop()
    result = await loop.run([], user("ok thanks"))
    assert result.silent and result.response == ""


async def test_think_tags_are_split_from_the_reply(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(text="<think>weigh options</think>The answer is 4."))
    loop, _ = make_loop()
    result = await loop.run([], user("2+2"))
    assert result.response == "The answer is 4." and result.thinking == "weigh options"


async def test_provider_error_is_retried(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(fault="server_error"), Script(fault="overloaded", retry_after=None), Script(text="recovered"))
    loop, _ = make_loop()
    result = await loop.run([], user("hello"))
    assert result.response == "recovered"
    assert len(fake_llm.requests) == 3


async def test_provider_error_after_retries_raises_and_keeps_user_message(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(*[Script(fault="server_error") for _ in range(4)])
    loop, committed = make_loop()
    with pytest.raises(UpstreamError):
        await loop.run([], user("hello"))
    assert len(fake_llm.requests) == 4  # the first call and provider_max_retries=3
    assert [m.role for m in committed] == ["user"]


async def test_history_is_repaired_before_every_call(fake_llm: Any, make_loop: Any) -> None:
    broken = [
        Message("user", "first question"),
        Message("assistant", [ToolUseBlock("lost", "system_time", {})]),  # its result was never stored
        Message("user", [ToolResultBlock("ghost", "orphan result", False, "file_read")]),
        Message("user", ""),
        Message("assistant", "an answer"),
        Message("assistant", "and more"),
    ]
    fake_llm.script(Script(text="fine"))
    loop, _ = make_loop()
    await loop.run(broken, user("second question"))
    sent = sent_messages(fake_llm)
    roles = [m["role"] for m in sent]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_call_id"] == "lost" and "interrupted" in sent[2]["content"]
    assert "orphan result" not in str(sent)
    assert "an answer" in str(sent[3]["content"]) and "and more" in str(sent[3]["content"])  # merged run


async def test_policy_can_refuse_a_call(fake_llm: Any, make_loop: Any, tmp_path: Any) -> None:
    async def policy(call: Any, context: Any) -> Deny | None:
        return Deny("writes need approval") if call.name == "file_write" else None

    fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "x.txt", "content": "x"}, id="w")]),
                    Script(text="I was not allowed."))
    loop, committed = make_loop(policy=policy)
    await loop.run([], user("write x"))
    refused = committed[2].blocks()[0]
    assert refused.is_error and "writes need approval" in refused.content
    assert not (tmp_path / "workspace" / "x.txt").exists()


async def test_tool_timeout_and_result_cap(fake_llm: Any, make_loop: Any) -> None:
    async def slow(_d: Any, _c: Any) -> str:
        await asyncio.sleep(5)
        return "late"

    tools = [Tool("slow", "Slow.", slow, timeout=0.05), Tool("big", "Big.", lambda d, c: "x" * 5000)]
    fake_llm.script(Script(tool_calls=[ToolCall("slow", {}, id="s"), ToolCall("big", {}, id="b")]), Script(text="ok"))
    loop, committed = make_loop(tools=tools, max_tool_result_chars=1000)
    await loop.run([], user("go"))
    slow_result, big_result = committed[2].blocks()
    assert slow_result.is_error and "did not finish within 0.05 seconds" in slow_result.content
    assert big_result.content.startswith("x" * 1000) and "[truncated: the result was 5000 characters" in big_result.content
    assert not big_result.is_error


async def test_tools_outside_the_allowed_list_are_neither_offered_nor_run(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "x", "content": "y"}, id="w")]), Script(text="ok"))
    loop, committed = make_loop(allowed=["file_read"])
    await loop.run([], user("go"))
    assert [t["function"]["name"] for t in fake_llm.requests[0].body["tools"]] == ["file_read"]
    assert "unknown tool 'file_write'" in committed[2].blocks()[0].content


async def test_continuation_on_max_tokens(fake_llm: Any, make_loop: Any) -> None:
    from librefang_runtime.loop import CONTINUE_NUDGE

    fake_llm.script(Script(text="Part one, ", stop_reason="max_tokens"),
                    Script(text="part two", stop_reason="max_tokens"), Script(text=". The end."))
    events: list[Any] = []
    loop, committed = make_loop(events=events)
    result = await loop.run([], user("tell a long story"))
    assert result.response == "Part one, part two. The end." and result.iterations == 3
    second = sent_messages(fake_llm, 1)
    assert second[-2] == {"role": "assistant", "content": "Part one, "}
    assert second[-1]["role"] == "user" and CONTINUE_NUDGE in str(second[-1]["content"])
    assert [e.detail for e in events if isinstance(e, PhaseChange) and e.phase == "continuing"] == ["1/5", "2/5"]
    assert [m.role for m in committed] == ["user", "assistant", "assistant", "assistant"]  # the asks are not stored


async def test_continuation_stops_after_the_limit(fake_llm: Any, make_loop: Any) -> None:
    fake_llm.script(*[Script(text=f"{i}", stop_reason="max_tokens") for i in range(10)])
    loop, _ = make_loop(max_continuations=2)
    result = await loop.run([], user("go"))
    assert result.response == "012" and len(fake_llm.requests) == 3

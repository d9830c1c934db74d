"""Incremental repair (RepairMemo) gives exactly what the full repair gives, for well-formed and
broken histories alike, across the ways a session's history changes between two model calls
(appended, slid forward by trimming, re-read from storage, cleared, compacted, nudged)."""

from __future__ import annotations

import random
from typing import Any

from librefang_providers.api import (
    ImageBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from librefang_runtime.attachments import has_images
from librefang_runtime.history import content_to_json, message_from_json, repair
from librefang_runtime.repair_memo import RepairMemo, well_formed

from tests.fakes.llm_server import Script


def random_block(rng: random.Random, role: str) -> object:
    kind = rng.random()
    ids = ["a", "b", "c"]
    if kind < 0.05:
        return ImageBlock("image/png", "", "lf-upload://x")
    if kind < 0.35:
        return TextBlock(rng.choice(["hi", "there", "", "  "]))
    if kind < 0.45:
        return ThinkingBlock(rng.choice(["", "hmm"]), rng.choice([None, "sig"]))
    if kind < 0.7 and role == "assistant" or kind < 0.5:
        return ToolUseBlock(rng.choice(ids), "t", {"x": rng.randint(0, 1)})
    return ToolResultBlock(rng.choice(ids), "ok", rng.random() < 0.2, "t")


def random_message(rng: random.Random) -> Message:
    role = rng.choice(["user", "assistant"])
    if rng.random() < 0.15:
        return Message(role, rng.choice(["", "plain text"]))  # type: ignore[arg-type]
    return Message(role, [random_block(rng, role) for _ in range(rng.randint(0, 3))])  # type: ignore[arg-type]


def good_turn(rng: random.Random, n: int) -> list[Message]:
    """A well-formed exchange: a question, maybe tool rounds, an answer."""
    out = [Message("user", [TextBlock(f"question {n}")])]
    for round_ in range(rng.randint(0, 2)):
        calls = [ToolUseBlock(f"call-{n}-{round_}-{i}", "t", {"i": i}) for i in range(rng.randint(1, 2))]
        out.append(Message("assistant", [TextBlock("let me look"), *calls]))
        out.append(Message("user", [ToolResultBlock(c.id, "done", False, "t") for c in calls]))
    out.append(Message("assistant", [TextBlock(f"answer {n}")]))
    return out


def decoded(messages: list[Message]) -> list[Message]:
    return [message_from_json(m.role, content_to_json(m)) for m in messages]


def check(memo: RepairMemo, history: list[Message]) -> list[Message]:
    before = [Message(m.role, list(m.blocks()) if not isinstance(m.content, str) else m.content) for m in history]
    assert memo.has_images(history) == has_images(history)
    got, got_report = memo.repair(history)
    want, want_report = repair(history)
    assert got == want
    assert got_report == want_report
    assert history == before  # the input is not modified
    return got


def test_memo_matches_full_repair_on_random_histories_and_changes() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        memo = RepairMemo()
        history: list[Message] = []
        turn = 0
        for _step in range(12):
            op = rng.random()
            if op < 0.4:  # a turn's messages appended (mostly well-formed ones)
                turn += 1
                history = history + (good_turn(rng, turn) if rng.random() < 0.8 else [random_message(rng)])
            elif op < 0.55:  # the trimmed window slides forward
                history = history[rng.randint(1, 3):]
            elif op < 0.7:  # read back from storage: equal messages, new objects
                history = decoded(history)
            elif op < 0.78:  # a nudge that is sent but not kept
                check(memo, history + [Message("user", "continue")])
                continue
            elif op < 0.86:  # cleared, or compacted into a summary
                history = [Message("user", "summary of earlier turns")] if rng.random() < 0.5 else []
            elif op < 0.93:  # a broken piece (a crash left a tool call open...)
                history = history + [random_message(rng) for _ in range(rng.randint(1, 3))]
            else:  # something entirely different
                history = [random_message(rng) for _ in range(rng.randint(0, 8))]
            check(memo, history)


def test_random_messages_alone_and_after_their_prefix_agree_with_repair() -> None:
    rng = random.Random(99)
    for _ in range(3000):
        history = [random_message(rng) for _ in range(rng.randint(0, 6))]
        check(RepairMemo(), history)
        memo = RepairMemo()
        check(memo, history[:rng.randint(0, len(history))])
        check(memo, history)


def test_a_growing_history_reuses_what_was_repaired_before() -> None:
    rng = random.Random(5)
    memo = RepairMemo()
    history = good_turn(rng, 1) + good_turn(rng, 2)
    assert well_formed(history)
    first = check(memo, history)
    longer = history + good_turn(rng, 3)
    second = check(memo, longer)
    assert all(a is b for a, b in zip(first, second, strict=False))  # kept, not rebuilt
    slid = decoded(longer)[2:]
    while slid[0].role != "user" or any(isinstance(b, ToolResultBlock) for b in slid[0].blocks()):
        slid = slid[1:]
    check(memo, slid)


def test_a_broken_history_is_still_repaired_after_a_good_one() -> None:
    memo = RepairMemo()
    good = [Message("user", [TextBlock("q")]), Message("assistant", [TextBlock("a")])]
    check(memo, good)
    open_call = Message("assistant", [ToolUseBlock("x", "t", {})])
    repaired = check(memo, [*good, Message("user", [TextBlock("q2")]), open_call])
    assert isinstance(repaired[-1].blocks()[0], ToolResultBlock)  # synthesised, as repair does
    duplicate = [*good, Message("user", [TextBlock("q2")]),
                 Message("assistant", [ToolUseBlock("y", "t", {}), ToolUseBlock("y", "t", {})]),
                 Message("user", [ToolResultBlock("y", "1", False, "t"), ToolResultBlock("y", "2", False, "t")])]
    assert check(memo, duplicate) == repair(duplicate)[0]


async def test_turns_of_a_session_share_its_memo_and_a_broken_store_is_still_repaired(
        runtime_env: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = runtime_env
    runtime = kernel.services["runtime"]
    agent_id = await spawn(kernel, "memoised")

    async def say(text: str) -> dict[str, Any]:
        response = await client.post(f"/api/agents/{agent_id}/message", json={"message": text})
        assert response.status_code == 200, await response.get_data(as_text=True)
        return await response.get_json()

    session = (await say("one"))["session_id"]
    await say("two")
    memo = runtime._repairs[session]
    assert [m.blocks()[0].text for m in memo.inputs if m.role == "user"] == ["one", "two"]
    # a crash left a tool call without its result in the stored session (not through a turn)
    await runtime.store.append(session, Message("assistant", [ToolUseBlock("lost", "system_time", {})]))
    fake_llm.script(Script(text="fine"))
    await say("three")
    sent = fake_llm.requests[-1].body["messages"]
    calls = [m for m in sent if m["role"] == "assistant" and m.get("tool_calls")]
    assert calls and calls[-1]["tool_calls"][0]["id"] == "lost"
    results = [m for m in sent if m["role"] == "tool"]
    assert results and results[-1]["tool_call_id"] == "lost"  # synthesised before the provider saw it

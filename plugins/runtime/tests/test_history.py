"""History repair and trimming (pure functions), and the JSON round trip of messages."""

from __future__ import annotations

from librefang_providers.api import Message, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock
from librefang_runtime.history import (
    MISSING_RESULT,
    content_to_json,
    message_from_json,
    repair,
    trim,
)


def use(id_: str, name: str = "t") -> ToolUseBlock:
    return ToolUseBlock(id_, name, {"x": 1})


def res(id_: str, text: str = "ok") -> ToolResultBlock:
    return ToolResultBlock(id_, text, False, "t")


def shape(messages: list[Message]) -> list[tuple[str, list[str]]]:
    out = []
    for m in messages:
        kinds = []
        for b in m.blocks():
            if isinstance(b, ToolUseBlock):
                kinds.append(f"use:{b.id}")
            elif isinstance(b, ToolResultBlock):
                kinds.append(f"result:{b.tool_use_id}")
            elif isinstance(b, TextBlock):
                kinds.append(f"text:{b.text}")
            else:
                kinds.append(b.type)
        out.append((m.role, kinds))
    return out


def test_well_formed_history_is_unchanged() -> None:
    history = [Message("user", "q"), Message("assistant", [TextBlock("let me"), use("a")]),
               Message("user", [res("a")]), Message("assistant", "answer")]
    repaired, report = repair(history)
    assert not report.changed
    assert shape(repaired) == shape(history)


def test_orphan_results_are_dropped() -> None:
    history = [Message("user", [res("ghost"), TextBlock("q")]), Message("assistant", "a"),
               Message("user", [res("ghost2")]), Message("user", "next")]
    repaired, report = repair(history)
    assert shape(repaired) == [("user", ["text:q"]), ("assistant", ["text:a"]), ("user", ["text:next"])]
    assert report.dropped_orphans == 2


def test_missing_results_are_synthesised() -> None:
    history = [Message("user", "q"), Message("assistant", [use("a"), use("b")]), Message("user", [res("b")]),
               Message("assistant", [use("c")])]
    repaired, report = repair(history)
    assert shape(repaired) == [
        ("user", ["text:q"]), ("assistant", ["use:a", "use:b"]), ("user", ["result:a", "result:b"]),
        ("assistant", ["use:c"]), ("user", ["result:c"]),
    ]
    assert report.synthesised == 2
    synthesised = repaired[2].blocks()[0]
    assert synthesised.is_error and synthesised.content == MISSING_RESULT


def test_same_role_runs_merge_and_empties_drop() -> None:
    history = [Message("user", "a"), Message("user", ""), Message("user", "b"), Message("assistant", [TextBlock("  ")]),
               Message("assistant", "c"), Message("assistant", [ThinkingBlock("")]), Message("assistant", "d")]
    repaired, report = repair(history)
    assert shape(repaired) == [("user", ["text:a", "text:b"]), ("assistant", ["text:c", "text:d"])]
    assert report.dropped_empty == 3 and report.merged >= 2


def test_results_come_first_in_a_merged_user_turn() -> None:
    history = [Message("user", "q"), Message("assistant", [use("a")]), Message("user", "by the way"),
               Message("user", [res("a")])]
    repaired, _ = repair(history)
    assert shape(repaired)[2] == ("user", ["result:a", "text:by the way"])


def test_duplicate_results_keep_the_first() -> None:
    history = [Message("user", "q"), Message("assistant", [use("a")]), Message("user", [res("a", "one"), res("a", "two")])]
    repaired, report = repair(history)
    assert [b.content for b in repaired[2].blocks()] == ["one"]
    assert report.dropped_orphans == 1


def test_history_starts_with_a_user_turn() -> None:
    history = [Message("assistant", "hello, I am here"), Message("user", [res("x")]), Message("assistant", "hm"),
               Message("user", "real question")]
    repaired, _ = repair(history)
    assert shape(repaired) == [("user", ["text:real question"])]


def test_repair_is_idempotent_and_does_not_modify_input() -> None:
    history = [Message("assistant", [use("z")]), Message("user", "q"), Message("assistant", [use("a")]),
               Message("user", "q2"), Message("user", [res("nope")])]
    before = shape(history)
    once, _ = repair(history)
    twice, report = repair(once)
    assert shape(history) == before
    assert shape(twice) == shape(once) and not report.changed


def test_trim_never_splits_a_tool_pair() -> None:
    history = [Message("user", "q1"), Message("assistant", [use("a")]), Message("user", [res("a")]),
               Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2")]
    assert shape(trim(history, 10)) == shape(history)
    # a window of 4 would start at user{result:a}; it moves forward to the next real user turn
    assert shape(trim(history, 4)) == [("user", ["text:q2"]), ("assistant", ["text:a2"])]
    assert shape(trim(history, 5)) == [("user", ["text:q2"]), ("assistant", ["text:a2"])]
    assert shape(trim(history, 6)) == shape(history)


def test_json_round_trip() -> None:
    message = Message("assistant", [ThinkingBlock("hmm", "sig"), TextBlock("hi"), ToolUseBlock("i", "n", {"k": [1]}, "s")])
    back = message_from_json("assistant", content_to_json(message))
    assert back == message
    result = Message("user", [ToolResultBlock("i", "out", True, "n")])
    assert message_from_json("user", content_to_json(result)) == result

"""Conversation history: JSON (de)serialisation, trimming and the repair pass run before every LLM call.

A provider rejects a history whose tool calls and results do not pair up (Anthropic answers 400,
OpenAI too), and a crash, a cancelled run or a trimmed window can leave exactly that behind. So the
loop never sends stored history as is: :func:`repair` makes it well-formed first, and :func:`trim`
cuts a window without separating a tool_use from its tool_result.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from librefang_providers.api import (
    Block,
    ImageBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)

MISSING_RESULT = "This tool call was interrupted before it produced a result."


# -- JSON ------------------------------------------------------------------------------------------
def block_to_json(block: Block) -> dict[str, Any]:
    """One content block as a JSON object tagged by ``type`` (the stored and API shape)."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolUseBlock):
        data: dict[str, Any] = {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
        if block.signature:
            data["signature"] = block.signature
        return data
    if isinstance(block, ToolResultBlock):
        return {"type": "tool_result", "tool_use_id": block.tool_use_id, "tool_name": block.name,
                "content": block.content, "is_error": block.is_error}
    if isinstance(block, ThinkingBlock):
        data = {"type": "thinking", "thinking": block.text}
        if block.signature:
            data["signature"] = block.signature
        return data
    if isinstance(block, ImageBlock):
        return {"type": "image", "media_type": block.media_type, "data": block.data, "url": block.url}
    raise TypeError(f"unknown content block {type(block).__name__}")


def block_from_json(data: dict[str, Any]) -> Block:
    """The inverse of :func:`block_to_json`; ``ValueError`` for an unknown type."""
    kind = data.get("type")
    if kind == "text":
        return TextBlock(str(data.get("text", "")))
    if kind == "tool_use":
        return ToolUseBlock(str(data["id"]), str(data["name"]), dict(data.get("input") or {}), data.get("signature"))
    if kind == "tool_result":
        return ToolResultBlock(str(data["tool_use_id"]), str(data.get("content", "")), bool(data.get("is_error")),
                               str(data.get("tool_name", "")))
    if kind == "thinking":
        return ThinkingBlock(str(data.get("thinking", "")), data.get("signature"))
    if kind == "image":
        return ImageBlock(str(data.get("media_type", "image/png")), str(data.get("data", "")), str(data.get("url", "")))
    raise ValueError(f"unknown content block type {kind!r}")


def content_to_json(message: Message) -> list[dict[str, Any]]:
    """The content of ``message`` as a list of JSON blocks."""
    return [block_to_json(b) for b in message.blocks()]


def message_from_json(role: str, content: list[dict[str, Any]]) -> Message:
    """A :class:`Message` from a stored role and JSON block list."""
    if role not in ("user", "assistant"):
        raise ValueError(f"unknown role {role!r}")
    return Message(role, [block_from_json(b) for b in content])  # type: ignore[arg-type]


# The stdlib's exact output for content orjson would write differently (floats, NaN, big ints, non-str
# keys: tool inputs); one shared encoder (json.dumps with arguments builds a new one per call).
_STDLIB_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_FLAT_TYPES = (str, bool, type(None))


def is_flat(content: list[dict[str, Any]]) -> bool:
    """Whether every value of every block is a str, bool or None (every block but a tool call's)."""
    return all(type(value) in _FLAT_TYPES for block in content for value in block.values())


def encode_content(content: list[dict[str, Any]], flat: bool | None = None) -> str:
    """The stored JSON of a message's content (``content_to_json``). Flat content (see :func:`is_flat`)
    goes through orjson, whose output is then byte for byte the stdlib's ``json.dumps(...,
    ensure_ascii=False, separators=(",", ":"))`` (strings, booleans and null are written alike;
    tested over every code point); anything else, and what orjson refuses (lone surrogates), gets
    the stdlib's output."""
    if flat if flat is not None else is_flat(content):
        import orjson  # on first use: not needed to start the daemon (tests/bench/test_startup_imports.py)

        try:
            return orjson.dumps(content).decode()
        except TypeError:
            pass
    return _STDLIB_JSON.encode(content)


def stored_form(message: Message) -> tuple[list[dict[str, Any]], bool, str]:
    """(``content_to_json(message)``, whether it :func:`is_flat`, ``text_of(message)``), with a short
    way for the usual message: one text block."""
    content = message.content
    if type(content) is list and len(content) == 1 and type(content[0]) is TextBlock:
        text = content[0].text
        if type(text) is str:
            return [{"type": "text", "text": text}], True, text
    data = content_to_json(message)
    return data, is_flat(data), text_of(message)


def text_of(message: Message) -> str:
    """All text blocks of ``message`` joined."""
    return "".join(b.text for b in message.blocks() if isinstance(b, TextBlock))


# -- repair ----------------------------------------------------------------------------------------
@dataclass
class RepairReport:
    """What :func:`repair` changed (all zero for a history that was already well-formed)."""

    dropped_empty: int = 0
    merged: int = 0
    dropped_orphans: int = 0
    synthesised: int = 0
    dropped_leading: int = 0

    @property
    def changed(self) -> bool:
        return any((self.dropped_empty, self.merged, self.dropped_orphans, self.synthesised, self.dropped_leading))


def _is_empty_block(block: Block) -> bool:
    if isinstance(block, TextBlock):
        return not block.text.strip()
    if isinstance(block, ThinkingBlock):
        return not block.text and not block.signature
    return False


def _drop_empties(messages: list[Message], report: RepairReport) -> list[Message]:
    out = []
    for message in messages:
        blocks = [b for b in message.blocks() if not _is_empty_block(b)]
        # A message of thinking alone carries nothing a provider accepts as a turn.
        if not blocks or all(isinstance(b, ThinkingBlock) for b in blocks):
            report.dropped_empty += 1
            continue
        out.append(Message(message.role, blocks))
    return out


def _merge_runs(messages: list[Message], report: RepairReport) -> list[Message]:
    out: list[Message] = []
    for message in messages:
        if out and out[-1].role == message.role:
            out[-1] = Message(message.role, [*out[-1].blocks(), *message.blocks()])
            report.merged += 1
        else:
            out.append(Message(message.role, list(message.blocks())))
    return out


def _pair_tools(messages: list[Message], report: RepairReport) -> list[Message]:
    """Keep each user message's tool results only for the tool calls of the assistant message just
    before it, and give every tool call a result (synthesised as an error when none was recorded)."""
    out: list[Message] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        if message.role == "assistant":
            out.append(message)
            calls = [b for b in message.blocks() if isinstance(b, ToolUseBlock)]
            following = messages[index + 1] if index + 1 < len(messages) else None
            if calls:
                existing = following.blocks() if following is not None and following.role == "user" else []
                results: dict[str, ToolResultBlock] = {}
                others: list[Block] = []
                for block in existing:
                    if isinstance(block, ToolResultBlock):
                        wanted = any(c.id == block.tool_use_id for c in calls)
                        if wanted and block.tool_use_id not in results:
                            results[block.tool_use_id] = block
                        else:
                            report.dropped_orphans += 1
                    else:
                        others.append(block)
                ordered: list[Block] = []
                for call in calls:
                    result = results.get(call.id)
                    if result is None:
                        result = ToolResultBlock(call.id, MISSING_RESULT, True, call.name)
                        report.synthesised += 1
                    ordered.append(result)
                # Tool results come first in the user turn (Anthropic requires it), then any text.
                out.append(Message("user", ordered + others))
                if following is not None and following.role == "user":
                    index += 1
            index += 1
            continue
        # A user message not right after a tool-calling assistant message: no result belongs here.
        kept = []
        for block in message.blocks():
            if isinstance(block, ToolResultBlock):
                report.dropped_orphans += 1
            else:
                kept.append(block)
        out.append(Message("user", kept))
        index += 1
    return out


def _drop_leading(messages: list[Message], report: RepairReport) -> list[Message]:
    # A provider wants the conversation to open with the user; what comes before has no question.
    start = 0
    while start < len(messages) and messages[start].role != "user":
        start += 1
    report.dropped_leading += start
    return messages[start:]


def repair(messages: list[Message]) -> tuple[list[Message], RepairReport]:
    """A well-formed copy of ``messages``: empties dropped, same-role runs merged, orphan tool results
    dropped, missing tool results synthesised, and the history starting with a user turn. The input
    is not modified. Idempotent: repairing a repaired history changes nothing."""
    report = RepairReport()
    history = list(messages)
    # Each step can expose work for another (dropping orphans empties a message, whose removal puts
    # two assistant turns side by side...); a few passes reach the fixed point.
    for _ in range(4):
        step = RepairReport()
        history = _drop_empties(history, step)
        history = _merge_runs(history, step)
        history = _drop_leading(history, step)
        history = _pair_tools(history, step)
        for name in ("dropped_empty", "merged", "dropped_orphans", "synthesised", "dropped_leading"):
            setattr(report, name, getattr(report, name) + getattr(step, name))
        if not step.changed:
            break
    return history, report


def trim(messages: list[Message], max_messages: int) -> list[Message]:
    """The most recent ``max_messages`` messages, moved forward so the window starts at a user turn
    that is not a tool result (a tool_use is never separated from its tool_result)."""
    if len(messages) <= max_messages:
        return list(messages)
    start = len(messages) - max_messages
    while start < len(messages) and (messages[start].role != "user" or _has_results(messages[start])):
        start += 1
    return list(messages[start:])


def _has_results(message: Message) -> bool:
    return any(isinstance(b, ToolResultBlock) for b in message.blocks())


# -- the recent window of busy sessions -------------------------------------------------------------
@dataclass
class Window:
    """The most recent stored messages of one session, decoded. ``items`` are the last
    ``min(count, cap)`` messages of the session (``cap`` = the limit they were read with, None = all);
    ``info`` is the session's row. What an item is (a stored message with its time) is the store's."""

    info: Any
    items: list[Any]
    cap: int | None

    def covers(self, limit: int | None) -> bool:
        """Whether the last ``limit`` messages (None: all) are all here."""
        if len(self.items) >= self.info.message_count:  # the whole session
            return True
        return limit is not None and self.cap is not None and limit <= self.cap


class WindowCache:
    """Decoded recent history of the busiest sessions (LRU, at most ``max_sessions``), so a turn of a
    busy session reads no history from the database and decodes only the messages it writes.

    The store keeps it exact: a committed append extends the window (:meth:`begin_write` /
    :meth:`end_write`), every other write path (clear, delete, compaction, label) drops the session's
    entry after its commit (:meth:`invalidate`), and a read from the database is installed only when
    no write of that session started or was in flight meanwhile (:meth:`begin_read` / :meth:`end_read`)."""

    def __init__(self, max_sessions: int = 256) -> None:
        self.max_sessions = max_sessions
        self._entries: OrderedDict[str, Window] = OrderedDict()
        self._busy: dict[str, list[int]] = {}  # session id -> [reads in flight, writes in flight, generation]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    def get(self, session_id: str, limit: int | None) -> Window | None:
        """The session's window when it holds the last ``limit`` messages, else None."""
        window = self._entries.get(session_id)
        if window is None or not window.covers(limit):
            return None
        self._entries.move_to_end(session_id)
        return window

    def peek(self, session_id: str) -> Window | None:
        """The session's window, whatever it covers (its ``info`` is the session's current row)."""
        return self._entries.get(session_id)

    def _state(self, session_id: str) -> list[int]:
        return self._busy.setdefault(session_id, [0, 0, 0])

    def _release(self, session_id: str, state: list[int]) -> None:
        if state[0] <= 0 and state[1] <= 0:
            del self._busy[session_id]

    def begin_read(self, session_id: str) -> int:
        """Call before reading the session from the database; pass the result to :meth:`end_read`."""
        state = self._state(session_id)
        state[0] += 1
        return state[2]

    def end_read(self, session_id: str, token: int, window: Window | None) -> None:
        """Install ``window`` (read since :meth:`begin_read`) unless the session was written meanwhile."""
        state = self._busy[session_id]
        state[0] -= 1
        fresh = state[2] == token and state[1] == 0
        self._release(session_id, state)
        if window is not None and fresh:
            self._entries[session_id] = window
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)

    def begin_write(self, session_id: str) -> None:
        """An append to the session is about to be written (call :meth:`end_write` in every case)."""
        state = self._state(session_id)
        state[1] += 1
        state[2] += 1

    def end_write(self, session_id: str, items: list[Any] | None, message_count: int = 0,
                  updated_at: float = 0.0) -> None:
        """The append ended: ``items`` were committed at the end of the session, which now has
        ``message_count`` messages; ``items=None`` when it failed or its outcome is unknown."""
        state = self._busy[session_id]
        state[1] -= 1
        state[2] += 1
        self._release(session_id, state)
        window = self._entries.get(session_id)
        if window is None:
            return
        if items is None:
            del self._entries[session_id]
            return
        window.items.extend(items)
        window.info.message_count = message_count
        window.info.updated_at = updated_at
        keep = min(message_count, window.cap) if window.cap is not None else message_count
        if len(window.items) > keep:
            del window.items[:len(window.items) - keep]

    def invalidate(self, session_id: str) -> None:
        """The session changed other than by an append (call after the change is committed): forget it."""
        state = self._busy.get(session_id)
        if state is not None:
            state[2] += 1  # a read in flight may have seen the old state: it will not be installed
        self._entries.pop(session_id, None)

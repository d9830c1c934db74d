"""Incremental history repair: the history of a model call is, nearly always, the previous call's
history (the session's window, slid forward by trimming) plus the few messages committed since.

:func:`~librefang_runtime.history.repair` is a full pass over the history on every model call.
:class:`RepairMemo` remembers the last history it checked and found well-formed, and checks only what
is new against it; a history that is not well-formed goes through :func:`repair` as before, so the
provider never sees a broken history.

Why checking only the new part is enough: "well-formed" (what :func:`repair` leaves unchanged) is a
set of local rules, each about one message, two neighbours, or the first or last message. A run of
messages equal to a run of a well-formed history keeps every rule inside it; what is left to check is
each new message, each new neighbour pair, and the two ends.
"""

from __future__ import annotations

from librefang_providers.api import (
    ImageBlock,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)

from librefang_runtime.history import RepairReport, _is_empty_block, repair


def _message_ok(message: Message) -> bool:
    """No empty block, and something besides thinking (what ``_drop_empties`` keeps as is)."""
    blocks = message.blocks()
    if not blocks:
        return False
    only_thinking = True
    for block in blocks:
        if _is_empty_block(block):
            return False
        if not isinstance(block, ThinkingBlock):
            only_thinking = False
    return not only_thinking


def _calls(message: Message) -> list[ToolUseBlock]:
    if message.role != "assistant" or isinstance(message.content, str):
        return []
    return [b for b in message.content if isinstance(b, ToolUseBlock)]


def _pair_ok(previous: Message, message: Message) -> bool:
    """The roles alternate, and a user message holds exactly the results of the tool calls of the
    assistant message before it (first, in call order) and no other result."""
    if previous.role == message.role:
        return False
    if message.role != "user":
        return True
    blocks = message.blocks()
    calls = _calls(previous)
    count = len(calls)
    if count:
        ids = [c.id for c in calls]
        if len(set(ids)) != count or len(blocks) < count:
            return False
        for call_id, block in zip(ids, blocks, strict=False):
            if not isinstance(block, ToolResultBlock) or block.tool_use_id != call_id:
                return False
    return not any(isinstance(b, ToolResultBlock) for b in blocks[count:])


def well_formed(messages: list[Message], checked: int = 0) -> bool:
    """Whether :func:`repair` would leave ``messages`` as they are, given that ``messages[:checked]``
    is a run of a history already found well-formed."""
    if not messages:
        return True
    first, last = messages[0], messages[-1]
    if first.role != "user" or any(isinstance(b, ToolResultBlock) for b in first.blocks()):
        return False
    if _calls(last):  # a tool call at the very end has no result after it
        return False
    previous = messages[checked - 1] if checked > 0 else None
    for index in range(checked, len(messages)):
        message = messages[index]
        content = message.content
        # Plain text, the common case: one text block (a string, or a stored message's single block).
        text = content if isinstance(content, str) else \
            content[0].text if len(content) == 1 and type(content[0]) is TextBlock else None
        if text is not None:
            if not text.strip():
                return False
            if previous is not None and (previous.role == message.role
                                         or (message.role == "user" and _calls(previous))):
                return False
        elif not _message_ok(message) or (previous is not None and not _pair_ok(previous, message)):
            return False
        previous = message
    return True


class RepairMemo:
    """The last well-formed history seen (``inputs``) and what :func:`repair` makes of it
    (``outputs``: equal messages). One per session; used by one turn at a time (the session's lock).

    It needs no invalidation: a new history is compared with the remembered one message by message
    (the same object, or an equal one), and whatever differs is checked. Messages are never changed in
    place once committed (the session's window cache relies on that too)."""

    def __init__(self) -> None:
        self.inputs: list[Message] = []
        self.outputs: list[Message] = []
        self.image_free = False  # True when no message of ``inputs`` holds an image

    def _overlap(self, messages: list[Message]) -> tuple[int, int]:
        """(where ``messages`` starts in the remembered history, how many messages match from there)."""
        inputs = self.inputs
        if not inputs or not messages:
            return 0, 0
        try:
            # The first element that is, or equals, the first message (at C speed): an equal run is as
            # good as the same one (equal inputs were repaired to equal outputs).
            start = inputs.index(messages[0])
        except ValueError:
            return 0, 0
        limit = min(len(messages), len(inputs) - start)
        if messages[:limit] == inputs[start:start + limit]:  # list comparison: same objects compare at C speed
            return start, limit
        # The longest equal run (equal runs of a length imply equal runs of every shorter one).
        low, high = 0, limit - 1
        while low < high:
            middle = (low + high + 1) // 2
            if messages[:middle] == inputs[start:start + middle]:
                low = middle
            else:
                high = middle - 1
        return start, low

    def has_images(self, messages: list[Message]) -> bool:
        """Whether any of ``messages`` holds an image block, looking only at what is new when the
        remembered history had none."""
        start, matched = self._overlap(messages) if self.image_free else (0, 0)
        return any(not isinstance(m.content, str) and any(isinstance(b, ImageBlock) for b in m.content)
                   for m in messages[matched:])

    def repair(self, messages: list[Message]) -> tuple[list[Message], RepairReport]:
        """What :func:`repair` returns for ``messages``, checking only what is new."""
        start, matched = self._overlap(messages)
        if not well_formed(messages, matched):
            self.inputs, self.outputs, self.image_free = [], [], False
            return repair(messages)
        outputs = self.outputs[start:start + matched]
        # A run of an image-free history is image-free: only the new messages need looking at.
        image_free = self.image_free or not matched
        for index in range(matched, len(messages)):
            message = messages[index]
            blocks = message.blocks()
            outputs.append(Message(message.role, list(blocks)))
            if image_free:
                for block in blocks:
                    if isinstance(block, ImageBlock):
                        image_free = False
                        break
        self.inputs, self.outputs, self.image_free = list(messages), outputs, image_free
        return list(outputs), RepairReport()

"""The ``apply_patch`` tool: several file changes in one call, in the patch format models know::

    *** Begin Patch
    *** Add File: notes/todo.md
    +first line
    *** Update File: app.py
    *** Move to: main.py
    @@ def greet():
    -    print("hi")
    +    print("hello")
    *** Delete File: old.txt
    *** End Patch

Every change is worked out in memory first; nothing is written unless the whole patch applies.
Paths are checked like the file tools' (inside the workspace only).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librefang_runtime.builtin_tools import MAX_WRITE_BYTES, resolve_in_workspace
from librefang_runtime.tools import Tool, ToolContext, ToolError

MAX_PATCH_CHARS = 1024 * 1024
MAX_OPERATIONS = 100


@dataclass
class Hunk:
    anchor: str
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


@dataclass
class Operation:
    kind: str  # add | update | delete
    path: str
    move_to: str | None = None
    lines: list[str] = field(default_factory=list)  # add: the new file
    hunks: list[Hunk] = field(default_factory=list)  # update


def parse_patch(text: str) -> list[Operation]:
    """The operations of a patch; :class:`ToolError` naming the first line that does not fit."""
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != "*** Begin Patch" or lines[-1].strip() != "*** End Patch":
        raise ToolError("a patch starts with '*** Begin Patch' and ends with '*** End Patch'")
    ops: list[Operation] = []
    current: Operation | None = None
    for number, line in enumerate(lines[1:-1], start=2):
        if line.startswith("*** Add File: "):
            current = Operation("add", line[len("*** Add File: "):].strip())
            ops.append(current)
        elif line.startswith("*** Update File: "):
            current = Operation("update", line[len("*** Update File: "):].strip())
            ops.append(current)
        elif line.startswith("*** Delete File: "):
            ops.append(Operation("delete", line[len("*** Delete File: "):].strip()))
            current = None
        elif line.startswith("*** Move to: ") and current is not None and current.kind == "update" and not current.hunks:
            current.move_to = line[len("*** Move to: "):].strip()
        elif line.strip() == "*** End of File":
            continue
        elif current is not None and current.kind == "add" and line.startswith("+"):
            current.lines.append(line[1:])
        elif current is not None and current.kind == "update" and line.startswith("@@"):
            current.hunks.append(Hunk(line[2:].strip()))
        elif current is not None and current.kind == "update" and line[:1] in (" ", "-", "+", ""):
            if not current.hunks:
                current.hunks.append(Hunk(""))
            hunk = current.hunks[-1]
            body = line[1:]
            if line[:1] in (" ", ""):
                hunk.old.append(body)
                hunk.new.append(body)
            elif line[0] == "-":
                hunk.old.append(body)
            else:
                hunk.new.append(body)
        else:
            raise ToolError(f"line {number} of the patch is not understood: {line[:80]!r}")
        if len(ops) > MAX_OPERATIONS:
            raise ToolError(f"a patch may change at most {MAX_OPERATIONS} files")
    if not ops:
        raise ToolError("the patch changes nothing")
    return ops


def _find(lines: list[str], needle: list[str], start: int) -> int:
    if not needle:
        return len(lines)
    for index in range(start, len(lines) - len(needle) + 1):
        if lines[index:index + len(needle)] == needle:
            return index
    # Models often get trailing whitespace wrong: accept a match that differs only there.
    stripped = [n.rstrip() for n in needle]
    for index in range(start, len(lines) - len(needle) + 1):
        if [x.rstrip() for x in lines[index:index + len(needle)]] == stripped:
            return index
    return -1


def apply_hunks(original: str, hunks: list[Hunk], path: str) -> str:
    """``original`` with every hunk applied in order; :class:`ToolError` when one does not match."""
    lines = original.split("\n")
    trailing_newline = original.endswith("\n")
    if trailing_newline:
        lines.pop()
    position = 0
    for number, hunk in enumerate(hunks, start=1):
        if hunk.anchor:
            at = _find(lines, [hunk.anchor], position)
            if at < 0:
                at = next((i for i in range(position, len(lines)) if hunk.anchor.strip() in lines[i]), -1)
            if at < 0:
                raise ToolError(f"{path}: hunk {number}: the line {hunk.anchor[:80]!r} was not found")
            position = at
        found = _find(lines, hunk.old, position)
        if found < 0:
            raise ToolError(f"{path}: hunk {number} does not match the file (re-read it and retry)")
        lines[found:found + len(hunk.old)] = hunk.new
        position = found + len(hunk.new)
    return "\n".join(lines) + ("\n" if trailing_newline else "")


def _apply(workspace: Path | None, text: str) -> str:
    ops = parse_patch(text)
    writes: dict[Path, str] = {}
    deletes: list[Path] = []
    done = []
    for op in ops:
        target = resolve_in_workspace(workspace, op.path)
        if op.kind == "add":
            if target.exists() and target not in deletes:
                raise ToolError(f"{op.path} already exists (use *** Update File)")
            writes[target] = "\n".join(op.lines) + ("\n" if op.lines else "")
            done.append(f"added {op.path}")
        elif op.kind == "delete":
            if not target.is_file():
                raise ToolError(f"{op.path} does not exist")
            deletes.append(target)
            done.append(f"deleted {op.path}")
        else:
            source = writes.get(target)
            if source is None:
                if not target.is_file():
                    raise ToolError(f"{op.path} does not exist")
                source = target.read_text(encoding="utf-8", errors="replace")
            updated = apply_hunks(source, op.hunks, op.path)
            if op.move_to:
                destination = resolve_in_workspace(workspace, op.move_to)
                deletes.append(target)
                writes.pop(target, None)
                writes[destination] = updated
                done.append(f"updated {op.path} -> {op.move_to}")
            else:
                writes[target] = updated
                done.append(f"updated {op.path}")
    for path, content in writes.items():
        if len(content.encode("utf-8")) > MAX_WRITE_BYTES:
            raise ToolError(f"{path.name} would be larger than {MAX_WRITE_BYTES} bytes")
    # Everything applied in memory: now touch the disk.
    for path in deletes:
        if path not in writes:
            path.unlink(missing_ok=True)
    for path, content in writes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".tmp-{path.name}")
        temp.write_text(content, encoding="utf-8")
        temp.replace(path)
    return "Patch applied: " + "; ".join(done)


async def _apply_patch(data: dict[str, Any], context: ToolContext) -> str:
    text = data["patch"]
    if len(text) > MAX_PATCH_CHARS:
        raise ToolError(f"the patch is longer than {MAX_PATCH_CHARS} characters")
    return await asyncio.to_thread(_apply, context.workspace, text)


def apply_patch_tool() -> Tool:
    """The ``apply_patch`` tool."""
    return Tool(
        "apply_patch",
        "Add, update (with @@ hunks of ' ' context, '-' removed and '+' added lines), move or delete files "
        "of your workspace in one patch between '*** Begin Patch' and '*** End Patch'.",
        _apply_patch,
        {"type": "object", "properties": {"patch": {"type": "string"}}, "required": ["patch"]},
    )

"""``apply_patch`` (add, update with hunks, move, delete; all-or-nothing; paths checked) and ``file_delete``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from librefang_providers.api import ToolUseBlock
from librefang_runtime.builtin_tools import builtin_tools
from librefang_runtime.patch_tool import parse_patch
from librefang_runtime.tools import ToolContext, ToolError, ToolRegistry, execute


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


async def run(ws: Path, name: str, data: dict[str, Any]) -> Any:
    registry = ToolRegistry()
    for tool in builtin_tools():
        registry.register(tool)
    context = ToolContext(kernel=None, agent_id="a", agent_name="n", session_id="s", workspace=ws)
    outcome = await execute(registry, ToolUseBlock("c", name, data), context, allowed=set(registry.names()),
                            policy=None, time_limit=5, max_chars=100_000)
    return outcome.result


async def test_patch_adds_updates_moves_and_deletes(ws: Path) -> None:
    (ws / "app.py").write_text("def greet():\n    print('hi')\n\n\ndef other():\n    return 1\n")
    (ws / "old.txt").write_text("bye\n")
    patch = """*** Begin Patch
*** Add File: notes/todo.md
+- milk
+- eggs
*** Update File: app.py
*** Move to: main.py
@@ def greet():
-    print('hi')
+    print('hello')
@@ def other():
-    return 1
+    return 2
*** Delete File: old.txt
*** End Patch
"""
    result = await run(ws, "apply_patch", {"patch": patch})
    assert not result.is_error, result.content
    assert (ws / "notes" / "todo.md").read_text() == "- milk\n- eggs\n"
    assert (ws / "main.py").read_text() == "def greet():\n    print('hello')\n\n\ndef other():\n    return 2\n"
    assert not (ws / "app.py").exists() and not (ws / "old.txt").exists()
    assert "added notes/todo.md" in result.content and "updated app.py -> main.py" in result.content


async def test_a_patch_that_does_not_apply_changes_nothing(ws: Path) -> None:
    (ws / "a.txt").write_text("one\ntwo\n")
    patch = ("*** Begin Patch\n*** Add File: new.txt\n+x\n*** Update File: a.txt\n@@\n-three\n+four\n"
             "*** End Patch")
    result = await run(ws, "apply_patch", {"patch": patch})
    assert result.is_error and "hunk 1 does not match" in result.content
    assert not (ws / "new.txt").exists() and (ws / "a.txt").read_text() == "one\ntwo\n"


@pytest.mark.parametrize("patch, message", [
    ("no markers", "starts with '*** Begin Patch'"),
    ("*** Begin Patch\n*** End Patch", "changes nothing"),
    ("*** Begin Patch\n*** Add File: ../escape.txt\n+x\n*** End Patch", "'..' is not allowed"),
    ("*** Begin Patch\n*** Update File: missing.txt\n@@\n-a\n+b\n*** End Patch", "does not exist"),
    ("*** Begin Patch\n*** Delete File: /etc/passwd\n*** End Patch", "absolute paths"),
    ("*** Begin Patch\nrandom line\n*** End Patch", "not understood"),
])
async def test_bad_patches(ws: Path, patch: str, message: str) -> None:
    result = await run(ws, "apply_patch", {"patch": patch})
    assert result.is_error and message in result.content
    assert not (ws.parent / "escape.txt").exists()


def test_parse_counts_operations() -> None:
    ops = parse_patch("*** Begin Patch\n*** Add File: a\n+1\n*** Delete File: b\n*** End Patch\n")
    assert [(o.kind, o.path) for o in ops] == [("add", "a"), ("delete", "b")]
    with pytest.raises(ToolError):
        parse_patch("*** Begin Patch\n" + "*** Delete File: x\n" * 101 + "*** End Patch")


async def test_add_refuses_to_overwrite(ws: Path) -> None:
    (ws / "a.txt").write_text("keep")
    result = await run(ws, "apply_patch", {"patch": "*** Begin Patch\n*** Add File: a.txt\n+new\n*** End Patch"})
    assert result.is_error and (ws / "a.txt").read_text() == "keep"


async def test_file_delete(ws: Path, tmp_path: Path) -> None:
    (ws / "f.txt").write_text("x")
    (ws / "dir").mkdir()
    (ws / "dir" / "inner").write_text("y")
    (tmp_path / "outside.txt").write_text("safe")
    assert (await run(ws, "file_delete", {"path": "f.txt"})).content == "Deleted f.txt"
    assert not (ws / "f.txt").exists()
    refused = await run(ws, "file_delete", {"path": "dir"})
    assert refused.is_error and "not empty" in refused.content
    assert (await run(ws, "file_delete", {"path": "dir/inner"})).content == "Deleted dir/inner"
    assert (await run(ws, "file_delete", {"path": "dir"})).content == "Deleted folder dir"
    for bad in ("../outside.txt", ".", "nope.txt"):
        assert (await run(ws, "file_delete", {"path": bad})).is_error
    assert (tmp_path / "outside.txt").read_text() == "safe"
    assert "workspace itself" in (await run(ws, "file_delete", {"path": "."})).content

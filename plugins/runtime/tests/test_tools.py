"""The tool registry, input checks, and the built-in workspace tools (traversal refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from librefang_providers.api import ToolUseBlock
from librefang_runtime.builtin_tools import MAX_WRITE_BYTES, builtin_tools
from librefang_runtime.tools import Tool, ToolContext, ToolRegistry, cap, check_input, execute


@pytest.fixture
def registry() -> ToolRegistry:
    tools = ToolRegistry()
    for tool in builtin_tools():
        tools.register(tool, owner="runtime")
    return tools


@pytest.fixture
def context(tmp_path: Path) -> ToolContext:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return ToolContext(kernel=None, agent_id="a", agent_name="n", session_id="s", workspace=workspace)


async def run(registry: ToolRegistry, context: ToolContext, name: str, data: dict[str, Any]) -> Any:
    return await execute(registry, ToolUseBlock("c", name, data), context, allowed=set(registry.names()),
                         policy=None, time_limit=5, max_chars=100_000)


async def test_write_read_list_round_trip(registry: ToolRegistry, context: ToolContext) -> None:
    written = await run(registry, context, "file_write", {"path": "docs/a.txt", "content": "héllo"})
    assert written.status == "completed" and written.result.content == "Wrote 6 bytes to docs/a.txt"
    read = await run(registry, context, "file_read", {"path": "docs/a.txt"})
    assert read.result.content == "héllo" and not read.result.is_error
    listing = await run(registry, context, "file_list", {})
    assert listing.result.content == "docs/"
    listing = await run(registry, context, "file_list", {"path": "docs"})
    assert listing.result.content == "a.txt (6 bytes)"


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "C:/windows", "a\x00b", "..\\x"])
async def test_traversal_is_refused(registry: ToolRegistry, context: ToolContext, path: str) -> None:
    for name, data in (("file_read", {"path": path}), ("file_write", {"path": path, "content": "x"}),
                       ("file_list", {"path": path})):
        outcome = await run(registry, context, name, data)
        assert outcome.result.is_error and outcome.status == "error", (name, path)
    assert not (context.workspace.parent / "x").exists()


async def test_symlink_out_of_the_workspace_is_refused(registry: ToolRegistry, context: ToolContext,
                                                     tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (context.workspace / "link").symlink_to(secret)
    (context.workspace / "dirlink").symlink_to(tmp_path)
    outcome = await run(registry, context, "file_read", {"path": "link"})
    assert outcome.result.is_error and "leaves the agent workspace" in outcome.result.content
    outcome = await run(registry, context, "file_write", {"path": "dirlink/secret.txt", "content": "pwned"})
    assert outcome.result.is_error and secret.read_text() == "top secret"


async def test_limits_and_missing_files(registry: ToolRegistry, context: ToolContext) -> None:
    outcome = await run(registry, context, "file_write", {"path": "big", "content": "x" * (MAX_WRITE_BYTES + 1)})
    assert outcome.result.is_error and "at most" in outcome.result.content
    outcome = await run(registry, context, "file_read", {"path": "nope.txt"})
    assert outcome.result.is_error and "no such file" in outcome.result.content
    outcome = await run(registry, context, "file_write", {"path": "f", "content": 3})
    assert outcome.result.is_error and "'content' must be string" in outcome.result.content


def test_registry_refuses_bad_tools() -> None:
    tools = ToolRegistry()
    tools.register(Tool("ok_tool", "d", lambda d, c: "x"))
    with pytest.raises(ValueError, match="already registered"):
        tools.register(Tool("ok_tool", "d", lambda d, c: "x"))
    with pytest.raises(ValueError, match="must match"):
        tools.register(Tool("bad name!", "d", lambda d, c: "x"))
    with pytest.raises(ValueError, match="JSON Schema object"):
        tools.register(Tool("t2", "d", lambda d, c: "x", {"type": "string"}))
    with pytest.raises(ValueError, match="expects"):
        tools.register("not a tool")  # type: ignore[arg-type]


def test_check_input_and_cap() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": ["string", "null"]}},
              "required": ["n"]}
    assert check_input(schema, {"n": 1, "s": None}) is None
    assert check_input(schema, {}) == "missing required parameter 'n'"
    assert check_input(schema, {"n": True}) == "parameter 'n' must be integer"
    assert check_input(schema, {"n": "1"}) == "parameter 'n' must be integer"
    assert check_input(schema, []) == "tool input must be a JSON object"
    assert cap("abc", 5) == ("abc", False)
    text, cut = cap("abcdefgh", 3)
    assert cut and text.startswith("abc\n\n[truncated: the result was 8 characters")

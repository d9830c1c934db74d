"""Built-in tools: ``system_time`` and the workspace file tools (``file_read``, ``file_write``, ``file_list``).

File tools work inside the calling agent's workspace only: absolute paths, ``..``, NUL bytes and
symlinks that lead outside are refused. File I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from librefang.fsutil import replace_file

from librefang_runtime.tools import Tool, ToolContext, ToolError

MAX_READ_BYTES = 1024 * 1024
MAX_WRITE_BYTES = 1024 * 1024
MAX_LIST_ENTRIES = 1000
MAX_PATH_CHARS = 1024


def resolve_in_workspace(workspace: Path | None, relative: str) -> Path:
    """The absolute path of ``relative`` inside ``workspace``; :class:`ToolError` when it would leave it."""
    if workspace is None:
        raise ToolError("this tool works in an agent's workspace: call it for an agent (agent_id)")
    if not isinstance(relative, str) or "\x00" in relative or len(relative) > MAX_PATH_CHARS:
        raise ToolError("invalid path")
    norm = relative.replace("\\", "/").strip()
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise ToolError("absolute paths are not allowed; give a path relative to the workspace")
    if ".." in norm.split("/"):
        raise ToolError("'..' is not allowed in paths")
    root = workspace.resolve()
    target = (root / norm).resolve()
    # resolve() follows symlinks, so a link pointing outside is caught here too.
    if target != root and not target.is_relative_to(root):
        raise ToolError("path leaves the agent workspace")
    return target


def _system_time(_input: dict[str, Any], _context: ToolContext) -> str:
    now = dt.datetime.now(dt.UTC)
    return (f"{now.isoformat(timespec='seconds').replace('+00:00', 'Z')} "
            f"({now.strftime('%A')}, unix {int(now.timestamp())}, UTC)")


def _read(workspace: Path | None, path: str) -> str:
    target = resolve_in_workspace(workspace, path)
    if not target.is_file():
        raise ToolError(f"no such file: {path}")
    size = target.stat().st_size
    with target.open("rb") as handle:
        data = handle.read(MAX_READ_BYTES)
    text = data.decode("utf-8", errors="replace")
    if size > MAX_READ_BYTES:
        text += f"\n\n[file is {size} bytes; only the first {MAX_READ_BYTES} were read]"
    return text


async def _file_read(data: dict[str, Any], context: ToolContext) -> str:
    return await asyncio.to_thread(_read, context.workspace, data["path"])


def _write(workspace: Path | None, path: str, content: str) -> str:
    encoded = content.encode("utf-8")
    if len(encoded) > MAX_WRITE_BYTES:
        raise ToolError(f"content is {len(encoded)} bytes; at most {MAX_WRITE_BYTES} may be written at once")
    target = resolve_in_workspace(workspace, path)
    if target.is_dir():
        raise ToolError(f"{path} is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_file(target, encoded)  # readers never see half a file; a symlink is replaced, not followed
    return f"Wrote {len(encoded)} bytes to {path}"


async def _file_write(data: dict[str, Any], context: ToolContext) -> str:
    return await asyncio.to_thread(_write, context.workspace, data["path"], data["content"])


def _list(workspace: Path | None, path: str) -> str:
    target = resolve_in_workspace(workspace, path or ".")
    if not target.is_dir():
        raise ToolError(f"no such directory: {path or '.'}")
    entries = []
    for count, entry in enumerate(sorted(target.iterdir(), key=lambda p: p.name)):
        if count >= MAX_LIST_ENTRIES:
            entries.append(f"... (more than {MAX_LIST_ENTRIES} entries)")
            break
        if entry.name.startswith(".tmp-"):
            continue
        if entry.is_dir():
            entries.append(f"{entry.name}/")
        else:
            entries.append(f"{entry.name} ({entry.stat().st_size} bytes)")
    return "\n".join(entries) if entries else "(empty)"


async def _file_list(data: dict[str, Any], context: ToolContext) -> str:
    return await asyncio.to_thread(_list, context.workspace, data.get("path", "."))


def _delete(workspace: Path | None, path: str) -> str:
    target = resolve_in_workspace(workspace, path)
    if workspace is not None and target == workspace.resolve():
        raise ToolError("the workspace itself cannot be deleted")
    if target.is_symlink() or target.is_file():
        target.unlink()
        return f"Deleted {path}"
    if target.is_dir():
        try:
            target.rmdir()
        except OSError:
            raise ToolError(f"{path} is a folder that is not empty; delete its files first") from None
        return f"Deleted folder {path}"
    raise ToolError(f"no such file: {path}")


async def _file_delete(data: dict[str, Any], context: ToolContext) -> str:
    return await asyncio.to_thread(_delete, context.workspace, data["path"])


def builtin_tools() -> list[Tool]:
    """The runtime's own tools."""
    from librefang_runtime.agent_tools import agent_tools
    from librefang_runtime.patch_tool import apply_patch_tool
    from librefang_runtime.web_tools import web_tools

    path = {"type": "string", "description": "Path relative to the agent's workspace"}
    return [
        Tool("system_time", "Get the current date and time (UTC).", _system_time,
             {"type": "object", "properties": {}}),
        Tool("file_read", "Read a text file from your workspace.", _file_read,
             {"type": "object", "properties": {"path": path}, "required": ["path"]}),
        Tool("file_write", "Write a text file in your workspace (creates folders, replaces the file).", _file_write,
             {"type": "object", "properties": {"path": path, "content": {"type": "string"}},
              "required": ["path", "content"]}),
        Tool("file_list", "List the files of a folder of your workspace.", _file_list,
             {"type": "object", "properties": {"path": {**path, "default": "."}}}),
        Tool("file_delete", "Delete a file (or an empty folder) of your workspace.", _file_delete,
             {"type": "object", "properties": {"path": path}, "required": ["path"]}),
        apply_patch_tool(),
        *agent_tools(),
        *web_tools(),
    ]

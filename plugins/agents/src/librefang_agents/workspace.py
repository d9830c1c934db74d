"""Agent workspaces: ``LIBREFANG_HOME/workspaces/agents/<name>/`` and safe paths inside them.

A workspace folder is created on first use (the first file written, or the agent runtime asking
for it), so idle agents cost no folder and spawning touches no file system.

Every client-supplied path is resolved inside the workspace: ``..``, absolute paths, NUL bytes and
symlinks whose target leaves the workspace are refused. Files are written to a temporary file and
renamed into place, so a reader never sees half a file and a symlink is replaced, not followed.
All functions here block; the service calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from librefang.errors import BadRequest, NotFound, PayloadTooLarge

MAX_PATH_CHARS = 1024
MAX_COMPONENT_BYTES = 255


class WorkspaceFull(PayloadTooLarge):
    """The write would take the workspace over its size or file-count quota."""


def workspaces_root(home: Path) -> Path:
    return home / "workspaces" / "agents"


def workspace_dir(home: Path, name: str) -> Path:
    """The workspace folder of the agent called ``name`` (names are validated folder-safe)."""
    return workspaces_root(home) / name


def create(home: Path, name: str) -> Path:
    """Make sure the workspace folder exists (0700) and return it."""
    path = workspace_dir(home, name)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def rename(home: Path, old: str, new: str) -> None:
    """Move a workspace when its agent is renamed (nothing to do when it was never created)."""
    source, target = workspace_dir(home, old), workspace_dir(home, new)
    if source.is_dir() and not target.exists():
        source.rename(target)


def archive(home: Path, name: str, agent_id: str) -> Path | None:
    """Move a killed agent's workspace to ``workspaces/archive/<name>-<id>`` (files are kept)."""
    source = workspace_dir(home, name)
    if not source.is_dir():
        return None
    target = home / "workspaces" / "archive" / f"{name}-{agent_id}"
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if target.exists():
        target = target.with_name(f"{target.name}-{int(time.time())}")
    source.rename(target)
    return target


def _parts(filename: str) -> list[str]:
    """The components of a client path; :class:`BadRequest` for NUL, control chars, '..', absolute."""
    if not filename or "\x00" in filename:
        raise BadRequest("file name is empty or contains a NUL byte", code="invalid_path")
    if len(filename) > MAX_PATH_CHARS:
        raise BadRequest(f"file path is longer than {MAX_PATH_CHARS} characters", code="invalid_path")
    if any(ord(ch) < 32 for ch in filename):
        raise BadRequest("file name contains control characters", code="invalid_path")
    norm = filename.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise BadRequest("absolute paths are not allowed", code="invalid_path")
    raw = norm.split("/")
    if ".." in raw:
        raise BadRequest("'..' is not allowed in file paths", code="invalid_path")
    parts = [p for p in raw if p not in ("", ".")]
    if not parts:
        raise BadRequest("file path names no file", code="invalid_path")
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES for p in parts):
        raise BadRequest(f"a path component is longer than {MAX_COMPONENT_BYTES} bytes", code="invalid_path")
    return parts


def resolve(root: Path, filename: str) -> Path:
    """The real path of ``filename`` inside ``root``; :class:`BadRequest` for anything that escapes."""
    parts = _parts(filename)
    real_root = root.resolve()
    real = real_root.joinpath(*parts).resolve()
    if real == real_root or not real.is_relative_to(real_root):
        raise BadRequest("path escapes the agent workspace (symlink)", code="invalid_path")
    return real


def _usage(root: Path, limit: int) -> tuple[int, int]:
    """(bytes, files) used by the workspace; stops counting files at ``limit`` + 1."""
    total = files = 0
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
            files += 1
            if files > limit:
                return total, files
    return total, files


def list_files(root: Path, limit: int) -> dict[str, Any]:
    """Regular files under the workspace (relative POSIX paths), at most ``limit`` entries."""
    items: list[dict[str, Any]] = []
    truncated = False
    if root.is_dir():
        for dirpath, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink():
                    continue
                if len(items) >= limit:
                    truncated = True
                    break
                items.append(
                    {"name": path.relative_to(root).as_posix(), "size": st.st_size, "modified": _iso(st.st_mtime)}
                )
            if truncated:
                break
    return {"files": items, "total": len(items), "truncated": truncated}


def _iso(ts: float) -> str:
    from librefang_agents.index import iso

    return iso(ts)


def read_file(root: Path, filename: str, max_bytes: int) -> dict[str, Any]:
    """A file's content: text when it is UTF-8, base64 otherwise."""
    path = resolve(root, filename)
    if path.is_dir():
        raise BadRequest(f"{filename!r} is a directory", code="is_a_directory")
    if not path.is_file():
        raise NotFound(f"no file {filename!r} in the workspace", code="file_not_found")
    size = path.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(f"file is {size} bytes; the files API reads at most {max_bytes}", code="file_too_large")
    data = path.read_bytes()
    try:
        content, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        content, encoding = base64.b64encode(data).decode("ascii"), "base64"
    rel = path.relative_to(root.resolve()).as_posix()
    return {"name": rel, "content": content, "encoding": encoding, "size": size, "modified": _iso(path.stat().st_mtime)}


def write_file(root: Path, filename: str, data: bytes, *, max_bytes: int, max_total: int, max_entries: int) -> dict[str, Any]:
    """Create or replace a file atomically, within the per-file and per-workspace quotas."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"file is {len(data)} bytes; the limit is {max_bytes}", code="file_too_large")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = resolve(root, filename)
    if path.is_dir():
        raise BadRequest(f"{filename!r} is a directory", code="is_a_directory")
    old_size = path.stat().st_size if path.is_file() else 0
    used, files = _usage(root, max_entries)
    if used - old_size + len(data) > max_total:
        raise WorkspaceFull(f"the workspace would exceed its quota of {max_total} bytes", code="workspace_full")
    if not old_size and not path.exists() and files + 1 > max_entries:
        raise WorkspaceFull(f"the workspace already holds {max_entries} files", code="workspace_full")
    real_root = root.resolve()
    parent = path.parent
    # Create missing folders one by one, refusing to walk through anything that is not a folder.
    current = real_root
    for part in parent.relative_to(real_root).parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise BadRequest(f"{part!r} in the path is not a folder", code="invalid_path")
        current.mkdir(exist_ok=True, mode=0o700)
    created = not path.exists()
    tmp = parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": path.relative_to(real_root).as_posix(), "size": len(data), "created": created}


def delete_file(root: Path, filename: str) -> str:
    """Remove one file. A symlink (whose target is inside the workspace) is removed, not followed."""
    resolve(root, filename)  # refuses NUL, '..', absolute paths and escaping symlinks
    real_root = root.resolve()
    lexical = real_root.joinpath(*_parts(filename))
    path = lexical.parent.resolve() / lexical.name
    if path.is_dir() and not path.is_symlink():
        raise BadRequest(f"{filename!r} is a directory", code="is_a_directory")
    if not path.exists() and not path.is_symlink():
        raise NotFound(f"no file {filename!r} in the workspace", code="file_not_found")
    path.unlink()
    return path.relative_to(real_root).as_posix()


def copy_workspace(home: Path, source: str, target: str, max_total: int) -> None:
    """Copy a workspace for a clone (regular files only, symlinks skipped, within the quota)."""
    src, dst = workspace_dir(home, source), workspace_dir(home, target)
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True, mode=0o700)
    copied = 0
    for dirpath, _dirs, names in os.walk(src, followlinks=False):
        rel = Path(dirpath).relative_to(src)
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            size = path.stat().st_size
            if copied + size > max_total:
                return
            (dst / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(path, dst / rel / name, follow_symlinks=False)
            copied += size

"""Writing ``config.toml``: allow-listed keys only, comments and unknown keys preserved (tomlkit),
a timestamped backup before every write, and the result validated before it replaces the file."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path
from typing import Any

from librefang.config import CONFIG_TEMPLATE
from librefang.errors import BadRequest, Forbidden

PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Keys that may be changed at runtime: exact paths and section prefixes.
WRITABLE_EXACT = {
    "log_level", "max_request_body_bytes", "max_upload_size_bytes", "cors_origin", "trusted_proxies",
}
WRITABLE_PREFIXES = ("rate_limit.", "audit.", "plugins.")
FORBIDDEN_SUFFIXES = (
    "api_key", ".token", ".secret", ".shared_secret", ".password", ".bypass", ".admin", ".owner", "_env",
    ".client_id", ".client_secret", "database_url", "api_listen",
)


def validate_key_path(path: str, plugin_sections: set[str] | None = None) -> list[str]:
    """Split and check a dotted key path; 400 for a malformed one, 403 for one not writable."""
    if not isinstance(path, str) or not path:
        raise BadRequest("path is required, e.g. \"rate_limit.api_requests_per_minute\"", code="invalid_path")
    if path.startswith(("/", ".")) or ".." in path or "\x00" in path or "\\" in path:
        raise BadRequest(f"invalid key path {path!r}: no leading '/', '.', '..' or NUL", code="invalid_path")
    parts = path.split(".")
    if len(parts) > 3 or not all(PATH_SEGMENT.match(p) for p in parts):
        raise BadRequest(
            f"invalid key path {path!r}: at most 3 segments of A-Z a-z 0-9 _ -", code="invalid_path"
        )
    lowered = path.lower()
    if lowered.endswith(FORBIDDEN_SUFFIXES) or parts[-1].lower() in {"api_key", "token", "secret", "password"}:
        raise Forbidden(f"{path} cannot be set through the API", code="key_not_writable")
    sections = plugin_sections or set()
    if not (path in WRITABLE_EXACT or path.startswith(WRITABLE_PREFIXES) or (len(parts) > 1 and parts[0] in sections)):
        raise Forbidden(f"{path} is not a runtime-writable key", code="key_not_writable")
    return parts


def backup(path: Path, home: Path) -> Path | None:
    """Copy ``config.toml`` to ``backups/config-<utc>.toml`` (keeps the newest 20)."""
    if not path.exists():
        return None
    folder = home / "backups"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"config-{stamp}.toml"
    shutil.copy2(path, target)
    for old in sorted(folder.glob("config-*.toml"))[:-20]:
        old.unlink(missing_ok=True)
    return target


def render_with(path: Path, parts: list[str], value: Any) -> str:
    """The file's text with ``parts`` set to ``value`` (``None`` removes the key)."""
    import tomlkit

    text = path.read_text(encoding="utf-8") if path.exists() else CONFIG_TEMPLATE
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:
        from librefang.errors import Conflict

        raise Conflict(f"config.toml cannot be parsed, fix it by hand first: {exc}", code="config_unparsable") from None
    table: Any = doc
    for part in parts[:-1]:
        if part not in table:
            if value is None:
                return tomlkit.dumps(doc)
            table[part] = tomlkit.table()
        table = table[part]
        if not hasattr(table, "keys"):
            raise BadRequest(f"{'.'.join(parts)}: {part} is not a table", code="invalid_path")
    if value is None:
        if parts[-1] in table:
            del table[parts[-1]]
    else:
        table[parts[-1]] = value
    return tomlkit.dumps(doc)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

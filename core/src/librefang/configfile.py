"""Writing ``config.toml``: allow-listed keys only, comments and unknown keys preserved (tomlkit),
the result validated before it replaces the file, and a timestamped backup before every write.

Used by ``POST /api/config/set`` and by ``librefang config set`` when no daemon is running.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from librefang.config import CONFIG_TEMPLATE, SECRET_KEY_PATTERN
from librefang.errors import BadRequest, ConfigError, Conflict, Forbidden
from librefang.fsutil import replace_file

if TYPE_CHECKING:  # pragma: no cover
    from librefang.config import Config

PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_PATH_CHARS = 200
MAX_VALUE_JSON_CHARS = 64 * 1024
MAX_BACKUPS = 20
# Core keys that may be changed at runtime: exact paths and section prefixes. Plugin sections
# are writable below their section name (``agents.max_agents``).
WRITABLE_EXACT = frozenset(
    {"log_level", "max_request_body_bytes", "max_upload_size_bytes", "cors_origin", "trusted_proxies"}
)
WRITABLE_PREFIXES = ("rate_limit.", "audit.", "plugins.")
# Never writable through the API: credentials (anything /api/config redacts), where the daemon
# listens and which database it uses (those would let an API caller redirect the daemon).
FORBIDDEN_EXACT = frozenset({"api_key", "api_key_hash", "api_listen", "database_url"})
FORBIDDEN_SUFFIXES = (".bypass", ".admin", ".owner", "_env", ".client_id")


def validate_key_path(path: Any, plugin_sections: set[str] | None = None) -> list[str]:
    """Split and check a dotted key path; 400 for a malformed one, 403 for one not writable."""
    if not isinstance(path, str) or not path:
        raise BadRequest('path is required, e.g. "rate_limit.api_requests_per_minute"', code="invalid_path")
    if len(path) > MAX_PATH_CHARS:
        raise BadRequest(f"key path longer than {MAX_PATH_CHARS} characters", code="invalid_path")
    if path.startswith(("/", ".")) or ".." in path or "\x00" in path or "\\" in path or "/" in path:
        raise BadRequest("invalid key path: no '/', '\\', leading '.', '..' or NUL allowed", code="invalid_path")
    parts = path.split(".")
    if len(parts) > 3 or not all(PATH_SEGMENT.match(p) for p in parts):
        raise BadRequest("invalid key path: at most 3 dot-separated segments of A-Z a-z 0-9 _ -", code="invalid_path")
    lowered = path.lower()
    leaf = parts[-1].lower()
    if lowered in FORBIDDEN_EXACT or leaf in FORBIDDEN_EXACT or SECRET_KEY_PATTERN.search(leaf) or lowered.endswith(
        FORBIDDEN_SUFFIXES
    ):
        raise Forbidden(f"{path} cannot be set through the API; edit config.toml by hand", code="key_not_writable")
    sections = plugin_sections or set()
    writable = path in WRITABLE_EXACT or path.startswith(WRITABLE_PREFIXES) or (len(parts) > 1 and parts[0] in sections)
    if not writable:
        raise Forbidden(f"{path} is not a runtime-writable key", code="key_not_writable")
    return parts


def check_value(value: Any) -> None:
    """Refuse values too large to be a config setting."""
    if len(json.dumps(value)) > MAX_VALUE_JSON_CHARS:
        raise BadRequest(f"value larger than {MAX_VALUE_JSON_CHARS} characters of JSON", code="value_too_large")


def backup(path: Path, home: Path) -> Path | None:
    """Copy ``config.toml`` to ``backups/config-<utc>.toml`` (keeps the newest 20)."""
    if not path.exists():
        return None
    folder = home / "backups"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"config-{stamp}.toml"
    shutil.copy2(path, target)
    for old in sorted(folder.glob("config-*.toml"))[:-MAX_BACKUPS]:
        old.unlink(missing_ok=True)
    return target


def _unparsable(exc: Exception) -> Conflict:
    return Conflict(f"config.toml cannot be parsed, fix it by hand first: {exc}", code="config_unparsable")


def render_with(path: Path, parts: list[str], value: Any) -> str:
    """The file's text with ``parts`` set to ``value`` (``None`` removes the key).

    409 when the current file is not valid TOML (nothing is written then); 400 when the value
    cannot be expressed in TOML or the path runs through a non-table value.
    """
    import tomlkit

    text = path.read_text(encoding="utf-8") if path.exists() else CONFIG_TEMPLATE
    try:
        tomllib.loads(text)
        doc = tomlkit.parse(text)
    except Exception as exc:  # tomllib and tomlkit raise different types; both mean "fix by hand"
        raise _unparsable(exc) from None
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
        try:
            table[parts[-1]] = value
        except Exception:
            raise BadRequest("value cannot be written as TOML (null inside a list?)", code="invalid_value") from None
    return tomlkit.dumps(doc)


def plan_set(config: Config, parts: list[str], value: Any) -> tuple[str, Config]:
    """The new file text and the validated config it would give; nothing is written.

    400 names the offending key (never the value) when the result does not validate.
    """
    check_value(value)
    text = render_with(config.path, parts, value)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise BadRequest("value cannot be written as TOML", code="invalid_value") from None
    try:
        candidate = config.revalidated(raw)
    except ConfigError as exc:
        raise BadRequest(str(exc), code="invalid_config_value") from None
    return text, candidate


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (0600) so a reader never sees a half-written file."""
    replace_file(path, text.encode("utf-8"), fsync=True)


def apply_set(config: Config, parts: list[str], value: Any) -> tuple[Config, Path | None]:
    """Validate, back up and write one change; returns the new config and the backup's path."""
    text, candidate = plan_set(config, parts, value)
    saved = backup(config.path, config.home)
    write_atomic(config.path, text)
    return candidate, saved

"""Agent templates: the bundled set shipped in ``templates/`` and the user's own.

User templates live in ``LIBREFANG_HOME/templates/<name>.toml`` (or ``<name>/agent.toml``) and
override a bundled template of the same name. Templates are read from disk on each request, off
the event loop, so an edited file is picked up without a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from librefang_agents.manifest import AgentManifest, ManifestError, parse_manifest

BUNDLED_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_USER_TEMPLATES = 1000


@dataclass
class Template:
    """One template: where it came from, its TOML text and the parsed manifest (or the parse error)."""

    name: str
    source: str  # "bundled" | "user"
    path: Path
    toml: str
    manifest: AgentManifest | None
    error: str | None

    def summary(self) -> dict[str, Any]:
        """The list view: name, description, tags, profile, model, source."""
        out: dict[str, Any] = {"name": self.name, "source": self.source}
        if self.manifest is None:
            out.update(description="", tags=[], profile=None, model=None, error=self.error)
            return out
        m = self.manifest
        out.update(
            description=m.description,
            tags=list(m.tags),
            profile=m.profile,
            module=m.module,
            model={"provider": m.model.provider, "model": m.model.model},
        )
        return out

    def detail(self) -> dict[str, Any]:
        """The single-template view: the summary plus the whole manifest."""
        out = self.summary()
        from librefang.config import redact

        out["manifest"] = redact(self.manifest.model_dump(mode="json", exclude_none=True)) if self.manifest else None
        return out


def valid_template_name(name: str) -> bool:
    return bool(TEMPLATE_NAME.fullmatch(name))


def _read(name: str, source: str, path: Path) -> Template | None:
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            return Template(name, source, path, "", None, f"template file is larger than {MAX_TEMPLATE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Template(name, source, path, "", None, f"cannot read template: {type(exc).__name__}")
    try:
        manifest = parse_manifest(text)
    except ManifestError as exc:
        return Template(name, source, path, text, None, str(exc))
    return Template(name, source, path, text, manifest, None)


def _user_paths(home: Path) -> dict[str, Path]:
    folder = home / "templates"
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for entry in sorted(folder.iterdir())[:MAX_USER_TEMPLATES]:
        if entry.is_file() and entry.suffix == ".toml" and valid_template_name(entry.stem):
            found[entry.stem] = entry
        elif entry.is_dir() and valid_template_name(entry.name) and (entry / "agent.toml").is_file():
            found.setdefault(entry.name, entry / "agent.toml")
    return found


def bundled_names() -> list[str]:
    """Names of the templates shipped with the plugin."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.toml"))


def list_templates(home: Path) -> list[Template]:
    """Every template (user ones override bundled ones of the same name), sorted by name. Blocking."""
    paths: dict[str, tuple[str, Path]] = {p.stem: ("bundled", p) for p in BUNDLED_DIR.glob("*.toml")}
    for name, path in _user_paths(home).items():
        paths[name] = ("user", path)
    out = []
    for name in sorted(paths):
        template = _read(name, *paths[name])
        if template is not None:
            out.append(template)
    return out


def find_template(home: Path, name: str) -> Template | None:
    """One template by name, or ``None``. The name must already be valid. Blocking."""
    user = _user_paths(home).get(name)
    if user is not None:
        return _read(name, "user", user)
    bundled = BUNDLED_DIR / f"{name}.toml"
    if bundled.is_file():
        return _read(name, "bundled", bundled)
    return None

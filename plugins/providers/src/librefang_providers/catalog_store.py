"""Reading and writing the catalog's layers (blocking file I/O: call it through ``asyncio.to_thread``).

Layers, later ones winning:

1. bundled ``data/providers.json`` and ``data/models.json`` (shipped with the package);
2. the local registry ``<home>/registry/providers/*`` and ``<home>/registry/models/*`` (``.toml`` in the
   reference layout ``[provider]`` + ``[[models]]``, or ``.json`` with ``provider``/``providers``/``models``);
   an entry with the id of a bundled one replaces it;
3. base-URL overrides: ``<home>/provider_urls.json`` (written by ``PUT /api/providers/{name}/url``),
   then ``[providers] provider_urls`` of config.toml;
4. ``<home>/custom_models.json`` (``POST /api/models/custom``): wins over any model of the same id;
5. aliases: each model's ``aliases``, then ``<home>/aliases.toml`` (``[aliases] short = "model-id"``,
   and ``removed = [...]`` for bundled aliases the user deleted).

A broken user file never stops the daemon: bad entries are skipped and reported in
``GET /api/catalog/status``.
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from librefang_providers.catalog import ALIAS, MODEL_ID, PROVIDER_ID, Catalog, ModelEntry, ProviderEntry

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_REGISTRY_FILES = 500
MAX_CUSTOM_MODELS = 1000
MAX_USER_ALIASES = 1000
MAX_REPORTED_ERRORS = 50

CUSTOM_MODELS_FILE = "custom_models.json"
ALIASES_FILE = "aliases.toml"
URL_OVERRIDES_FILE = "provider_urls.json"
SYNC_MARKER = ".last_sync.json"
REMOTE_FILE = "remote-catalog.json"

_ALIAS_RE = re.compile(ALIAS)
_MODEL_RE = re.compile(MODEL_ID)
_PROVIDER_RE = re.compile(PROVIDER_ID)


@dataclass
class LoadReport:
    """What a build read: counts per layer and the problems it skipped."""

    registry_files: int = 0
    registry_providers: int = 0
    registry_models: int = 0
    custom_models: int = 0
    user_aliases: int = 0
    url_overrides: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(message)


def _short_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"


# -- bundled data ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_bundled() -> tuple[tuple[ProviderEntry, ...], tuple[ModelEntry, ...]]:
    """The catalog shipped with the package (validated once per process; entries are immutable)."""
    data = resources.files("librefang_providers") / "data"
    providers_doc = json.loads((data / "providers.json").read_text(encoding="utf-8"))
    models_doc = json.loads((data / "models.json").read_text(encoding="utf-8"))
    providers = tuple(ProviderEntry.model_validate(p) for p in providers_doc["providers"])
    models = tuple(ModelEntry.model_validate(m) for m in models_doc["models"])
    return providers, models


def bundled_version() -> str:
    data = resources.files("librefang_providers") / "data"
    return str(json.loads((data / "models.json").read_text(encoding="utf-8")).get("updated", ""))


# -- documents (registry files and downloaded bundles) -------------------------------------------
def parse_document(doc: Any, origin: str, source: str, report: LoadReport) -> tuple[list[ProviderEntry], list[ModelEntry]]:
    """Providers and models of one catalog document; invalid entries are skipped and reported."""
    providers: list[ProviderEntry] = []
    models: list[ModelEntry] = []
    if not isinstance(doc, dict):
        report.error(f"{origin}: not a table/object")
        return providers, models
    raw_providers: list[Any] = []
    if isinstance(doc.get("provider"), dict):
        raw_providers.append(doc["provider"])
    if isinstance(doc.get("providers"), list):
        raw_providers.extend(doc["providers"])
    for index, raw in enumerate(raw_providers):
        try:
            providers.append(ProviderEntry.model_validate({**raw, "source": source}))
        except (ValidationError, TypeError) as exc:
            detail = _short_error(exc) if isinstance(exc, ValidationError) else "not a table"
            report.error(f"{origin}: provider #{index + 1}: {detail}")
    default_provider = providers[0].id if len(providers) == 1 else None
    raw_models = doc.get("models", [])
    if not isinstance(raw_models, list):
        report.error(f"{origin}: models must be a list")
        raw_models = []
    for index, raw in enumerate(raw_models):
        if not isinstance(raw, dict):
            report.error(f"{origin}: model #{index + 1}: not a table")
            continue
        data = {**raw, "source": source}
        if "provider" not in data and default_provider is not None:
            data["provider"] = default_provider
        try:
            models.append(ModelEntry.model_validate(data))
        except ValidationError as exc:
            report.error(f"{origin}: model #{index + 1}: {_short_error(exc)}")
    return providers, models


def _read_document(path: Path, report: LoadReport) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            report.error(f"{path.name}: larger than {MAX_FILE_BYTES} bytes")
            return None
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        report.error(f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def registry_dir(home: Path) -> Path:
    return home / "registry"


def registry_files(home: Path) -> list[Path]:
    """Catalog files of the local registry, sorted, bounded, symlinks outside it refused."""
    root = registry_dir(home)
    found: list[Path] = []
    for sub in ("providers", "models"):
        folder = root / sub
        if not folder.is_dir():
            continue
        resolved_root = folder.resolve()
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".toml", ".json") or not path.is_file():
                continue
            if path.resolve().parent != resolved_root:  # a symlink pointing elsewhere
                continue
            found.append(path)
    return found[:MAX_REGISTRY_FILES]


def load_registry(home: Path, report: LoadReport) -> tuple[list[ProviderEntry], list[ModelEntry]]:
    providers: list[ProviderEntry] = []
    models: list[ModelEntry] = []
    for path in registry_files(home):
        doc = _read_document(path, report)
        if doc is None:
            continue
        report.registry_files += 1
        got_providers, got_models = parse_document(doc, f"registry/{path.parent.name}/{path.name}", "registry", report)
        providers.extend(got_providers)
        models.extend(got_models)
    report.registry_providers = len(providers)
    report.registry_models = len(models)
    return providers, models


# -- user files -----------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_custom_models(home: Path, report: LoadReport) -> list[ModelEntry]:
    """``custom_models.json``: a list of model objects (or ``{"models": [...]}``)."""
    path = home / CUSTOM_MODELS_FILE
    if not path.exists():
        return []
    doc = _read_document(path, report)
    if isinstance(doc, dict):
        doc = doc.get("models", [])
    if not isinstance(doc, list):
        if doc is not None:
            report.error(f"{CUSTOM_MODELS_FILE}: expected a list of models")
        return []
    models = []
    for index, raw in enumerate(doc[:MAX_CUSTOM_MODELS]):
        if not isinstance(raw, dict):
            report.error(f"{CUSTOM_MODELS_FILE}: entry #{index + 1}: not an object")
            continue
        try:
            models.append(ModelEntry.model_validate({"tier": "custom", **raw, "source": "custom"}))
        except ValidationError as exc:
            report.error(f"{CUSTOM_MODELS_FILE}: entry #{index + 1}: {_short_error(exc)}")
    report.custom_models = len(models)
    return models


def write_custom_models(home: Path, models: list[ModelEntry]) -> None:
    """Persist the custom models (atomic replace)."""
    rows = [m.model_dump(mode="json", exclude={"source"}, exclude_none=True) for m in models]
    _atomic_write(home / CUSTOM_MODELS_FILE, json.dumps(rows, indent=2) + "\n")


def read_user_aliases(home: Path, report: LoadReport) -> tuple[dict[str, str], set[str]]:
    """``aliases.toml``: ``[aliases] short = "model-id"`` and ``removed = ["bundled-alias", ...]``."""
    path = home / ALIASES_FILE
    if not path.exists():
        return {}, set()
    doc = _read_document(path, report)
    if not isinstance(doc, dict):
        return {}, set()
    aliases: dict[str, str] = {}
    table = doc.get("aliases", {})
    if not isinstance(table, dict):
        report.error(f"{ALIASES_FILE}: [aliases] must be a table")
        table = {}
    for alias, target in list(table.items())[:MAX_USER_ALIASES]:
        key = str(alias).strip().lower()
        if not _ALIAS_RE.match(key) or not isinstance(target, str) or not _MODEL_RE.match(target):
            report.error(f"{ALIASES_FILE}: alias {str(alias)[:64]!r} is not valid")
            continue
        aliases[key] = target
    removed_raw = doc.get("removed", [])
    removed = {str(a).lower() for a in removed_raw[:MAX_USER_ALIASES]} if isinstance(removed_raw, list) else set()
    report.user_aliases = len(aliases)
    return aliases, removed


def write_user_aliases(home: Path, aliases: dict[str, str], removed: set[str]) -> None:
    """Persist user aliases, keeping the comments of an existing file (tomlkit)."""
    import tomlkit

    path = home / ALIASES_FILE
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    except (OSError, tomlkit.exceptions.TOMLKitError):
        document = tomlkit.document()  # an unreadable file is rewritten from the in-memory state
    # Edit in place so the user's comments and other keys survive (tomlkit puts a new top-level
    # key before the first table, where TOML needs it).
    document["removed"] = sorted(removed)
    table = document.get("aliases")
    if not isinstance(table, dict):
        if "aliases" in document:
            del document["aliases"]
        table = tomlkit.table()
        document["aliases"] = table
    for key in list(table.keys()):
        del table[key]
    for alias in sorted(aliases):
        table[alias] = aliases[alias]
    _atomic_write(path, tomlkit.dumps(document))


def read_url_overrides(home: Path, report: LoadReport) -> dict[str, str]:
    path = home / URL_OVERRIDES_FILE
    if not path.exists():
        return {}
    doc = _read_document(path, report)
    if not isinstance(doc, dict):
        return {}
    return {str(k): v for k, v in doc.items() if _PROVIDER_RE.match(str(k)) and isinstance(v, str)}


def write_url_overrides(home: Path, overrides: dict[str, str]) -> None:
    _atomic_write(home / URL_OVERRIDES_FILE, json.dumps(dict(sorted(overrides.items())), indent=2) + "\n")


def read_sync_marker(home: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((registry_dir(home) / SYNC_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_sync_marker(home: Path, info: dict[str, Any]) -> None:
    _atomic_write(registry_dir(home) / SYNC_MARKER, json.dumps(info, indent=2) + "\n")


def write_remote_bundle(home: Path, doc: dict[str, Any]) -> Path:
    """Store a downloaded catalog bundle in the local registry (it is then a registry file)."""
    path = registry_dir(home) / "providers" / REMOTE_FILE
    _atomic_write(path, json.dumps(doc) + "\n")
    return path


# -- the merged catalog -----------------------------------------------------------------------------
def build_catalog(home: Path, config_urls: dict[str, str] | None = None) -> tuple[Catalog, LoadReport]:
    """Merge every layer into a fresh :class:`Catalog`."""
    report = LoadReport()
    bundled_providers, bundled_models = load_bundled()
    providers: dict[str, ProviderEntry] = {p.id: p for p in bundled_providers}
    models: dict[tuple[str, str], ModelEntry] = {(m.provider, m.id.lower()): m for m in bundled_models}
    registry_providers, registry_models = load_registry(home, report)
    for provider in registry_providers:
        providers[provider.id] = provider
    for model in registry_models:
        if model.provider not in providers:
            report.error(f"registry model {model.id!r}: unknown provider {model.provider!r}")
            continue
        models[(model.provider, model.id.lower())] = model

    # config.toml wins: the driver registry applies it last too, so both agree on the URL in use.
    overrides = read_url_overrides(home, report)
    overrides.update({k: v for k, v in (config_urls or {}).items() if isinstance(v, str)})
    for provider_id, url in overrides.items():
        if provider_id in providers:
            providers[provider_id] = providers[provider_id].model_copy(update={"base_url": url})
            report.url_overrides += 1

    custom = read_custom_models(home, report)
    for model in custom:
        models[(model.provider, model.id.lower())] = model

    aliases: dict[str, str] = {}
    ordered = sorted(models.values(), key=lambda m: m.source != "custom")
    for model in ordered:
        for alias in model.aliases:
            aliases.setdefault(alias.lower(), model.id)
    user_aliases, removed = read_user_aliases(home, report)
    for alias in removed:
        aliases.pop(alias, None)
    aliases.update(user_aliases)
    catalog = Catalog(providers.values(), models.values(), aliases)
    return catalog, report


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""Configuration: ``LIBREFANG_HOME``, ``config.toml`` read into pydantic models, plugin sections.

The core model validates the top-level keys the kernel uses; each plugin contributes a section
model through the ``register_config`` hook. Unknown keys are kept (round-trip) and a bad value
fails with a message naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from librefang.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:4545"


def default_home() -> Path:
    """``$LIBREFANG_HOME`` or ``~/.librefang``."""
    env = os.environ.get("LIBREFANG_HOME")
    return Path(env).expanduser() if env else Path.home() / ".librefang"


class Section(BaseModel):
    """Base for config sections: unknown keys are kept."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class RateLimitConfig(Section):
    api_requests_per_minute: int = Field(500, ge=1, le=1_000_000)
    retry_after_secs: int = Field(60, ge=1, le=3600)
    max_tracked_clients: int = Field(100_000, ge=100, le=10_000_000)


class AuditConfig(Section):
    retention_days: int = Field(90, ge=0, le=36500)
    anchor_path: str = ""


class PluginsConfig(Section):
    disabled: list[str] = Field(default_factory=list)


class CoreConfig(Section):
    """Top-level keys of ``config.toml`` that the core reads."""

    api_listen: str = DEFAULT_LISTEN
    log_level: str = Field("info", pattern=r"^(?i:trace|debug|info|warning|warn|error|critical)$")
    api_key: str = ""
    cors_origin: list[str] = Field(default_factory=list)
    trusted_proxies: list[str] = Field(default_factory=list)
    max_request_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    max_upload_size_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=4 * 1024 * 1024 * 1024)
    database_url: str = ""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)


CORE_KEYS = set(CoreConfig.model_fields)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are leaves), for diffing two configs."""
    if not isinstance(value, dict) or (prefix and not value):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def format_config_error(exc: ValidationError, prefix: str = "") -> str:
    """Name every key that failed, e.g. ``rate_limit.api_requests_per_minute: ...``."""
    parts = []
    for err in exc.errors()[:8]:
        loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())) if p != "")
        parts.append(f"{loc}: {err.get('msg')}")
    return "invalid configuration: " + "; ".join(parts)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a missing file is an empty config; a syntax error names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


class Config:
    """The validated configuration of one kernel: core keys plus plugin sections."""

    def __init__(self, home: Path, raw: dict[str, Any]) -> None:
        self.home = home
        self.path = home / "config.toml"
        self.raw = raw
        try:
            self.core = CoreConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_config_error(exc)) from None
        env_key = os.environ.get("LIBREFANG_API_KEY")
        if env_key:
            self.core.api_key = env_key
        self.section_models: dict[str, type[BaseModel]] = {}
        self.section_owners: dict[str, str] = {}
        self._sections: dict[str, BaseModel] = {}

    @classmethod
    def load(cls, home: Path) -> Config:
        """Read ``<home>/config.toml`` (absent means defaults)."""
        return cls(home, read_toml(home / "config.toml"))

    def add_section(self, name: str, model: type[BaseModel], owner: str) -> None:
        """Register a plugin's section model and validate the file's ``[name]`` against it."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(f"config section name {name!r} must be snake_case")
        if name in CORE_KEYS or (name in self.section_owners and self.section_owners[name] != owner):
            raise ConfigError(f"config section [{name}] is already owned by {self.section_owners.get(name, 'core')}")
        try:
            value = model.model_validate(self.raw.get(name, {}))
        except ValidationError as exc:
            raise ConfigError(format_config_error(exc, name)) from None
        self.section_models[name] = model
        self.section_owners[name] = owner
        self._sections[name] = value

    def revalidated(self, raw: dict[str, Any]) -> Config:
        """A new :class:`Config` for ``raw`` with this config's plugin section models applied.

        Raises :class:`ConfigError` naming the first bad keys; ``self`` is left untouched, so a
        caller can validate a candidate file before adopting it.
        """
        new = Config(self.home, raw)
        for name, model in self.section_models.items():
            new.add_section(name, model, self.section_owners[name])
        return new

    def adopt(self, other: Config) -> None:
        """Take over ``other``'s values in place (holders of this object see the new values)."""
        self.raw = other.raw
        self.core = other.core
        self._sections = dict(other._sections)

    def remove_sections_of(self, owner: str) -> None:
        """Forget the sections a plugin registered (on unload or reload)."""
        for name in [n for n, o in self.section_owners.items() if o == owner]:
            del self.section_owners[name]
            self.section_models.pop(name, None)
            self._sections.pop(name, None)

    def section(self, name: str) -> Any:
        """The validated model of ``[name]``; ``KeyError`` when no plugin registered it."""
        return self._sections[name]

    def has_section(self, name: str) -> bool:
        return name in self._sections

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def database_url(self) -> str:
        """The SQLAlchemy async URL: ``database_url`` or SQLite under ``data/``."""
        url = self.core.database_url.strip()
        if url.startswith(("env:", "vault:")):
            from librefang.vault import Vault

            reference = url
            url = Vault(self.home).resolve(reference).strip()
            if not url:
                raise ConfigError(f"database_url: {reference} is empty")
        if not url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'librefang.db'}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url[len("postgresql://") :]
        return url

    def listen(self) -> tuple[str, int]:
        """``api_listen`` split into host and port."""
        host, _, port = self.core.api_listen.rpartition(":")
        try:
            return host.strip("[]") or "127.0.0.1", int(port)
        except ValueError:
            raise ConfigError(f"api_listen: {self.core.api_listen!r} is not host:port") from None

    def json_schema(self) -> dict[str, Any]:
        """Draft 2020-12 JSON Schema of the whole config: core keys and every plugin section."""
        schema = CoreConfig.model_json_schema()
        props = schema.setdefault("properties", {})
        defs = schema.setdefault("$defs", {})
        for name, model in sorted(self.section_models.items()):
            sub = model.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(sub.pop("$defs", {}))
            sub["x-plugin"] = self.section_owners[name]
            props[name] = sub
        schema["title"] = "LibreFang configuration"
        return schema

    def effective(self) -> dict[str, Any]:
        """Every key with its effective value (core, sections, and unknown keys kept)."""
        out: dict[str, Any] = dict(self.raw)
        out.update(self.core.model_dump(mode="json"))
        for name, value in self._sections.items():
            out[name] = value.model_dump(mode="json")
        return out


SECRET_KEY_PATTERN = re.compile(
    r"(^|_)(api_key|key|token|secret|password|pass|passwd|credential|credentials|private_key|shared_secret)$",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(\w+://)([^/@\s]+)@")


def redact(value: Any, key: str = "") -> Any:
    """Copy of ``value`` with secrets hidden: secret-named keys and credentials inside URLs."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and SECRET_KEY_PATTERN.search(key) and not key.endswith("_env"):
            return "***" if value else "not set"
        return _URL_USERINFO.sub(r"\1***@", value)
    return value


CONFIG_TEMPLATE = """\
# LibreFang configuration. Every key is optional; the values shown are the defaults.
# Full reference: docs/configuration.md, or GET /api/config/schema on a running daemon.
# Change keys at runtime with `librefang config set KEY VALUE` (comments here are kept), then
# keys marked [live] apply at once; the others need a restart.

# Address the HTTP API listens on. A non-loopback address without api_key admits no remote
# client unless LIBREFANG_ALLOW_NO_AUTH is set. [restart]
api_listen = "127.0.0.1:4545"

# trace | debug | info | warning | error [live]
log_level = "info"

# Bearer key for the API: plaintext, "$sha256$<hex>", "env:NAME" or "vault:NAME". [live]
# LIBREFANG_API_KEY overrides it. Empty: only loopback clients are admitted.
api_key = ""

# Extra CORS origins allowed besides the listen address. [live]
cors_origin = []

# Peers whose X-Forwarded-For / X-Real-IP / Forwarded headers are trusted (IPs or CIDRs). [live]
trusted_proxies = []

# Largest accepted request body and upload, in bytes. [live]
max_request_body_bytes = 8388608
max_upload_size_bytes = 10485760

# PostgreSQL instead of the default SQLite file data/librefang.db (needs the `postgres` extra):
# "postgresql://user:pass@host/db", or "env:NAME" / "vault:NAME" to keep the password out of here. [restart]
database_url = ""

[rate_limit]
# Tokens per minute per client IP; each route costs 1-50 tokens. Loopback is not limited. [live]
api_requests_per_minute = 500
# Retry-After seconds sent with a 429. [live]
retry_after_secs = 60
# Client IPs the limiter remembers at most (oldest forgotten first). [live]
max_tracked_clients = 100000

[audit]
# Audit entries older than this are trimmed (0 keeps everything). [live]
retention_days = 90
# Where the chain's tip hash is anchored (default data/audit.anchor). [restart]
anchor_path = ""

[plugins]
# Entry-point names of installed plugins not to load. [restart]
disabled = []
"""

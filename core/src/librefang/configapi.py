"""Config endpoints: redacted view, JSON Schema, set one key, reload the file.

A reload (also the last step of a set) validates the whole file first and keeps the live config
when it fails. Keys the edge reads per request (log level, key, CORS, proxies, limits) apply at
once; keys fixed at start (listen address, database, plugin selection) are reported as needing a
restart and keep their running values, so ``GET /api/config`` says what the daemon really uses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from librefang import current_kernel
from librefang.config import Config, flatten, read_toml, redact
from librefang.errors import BadRequest, ConfigError
from librefang.logs import quiet_http_loggers
from librefang.routing import Router

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

log = logging.getLogger("librefang.config")

# Core keys read only at start: (dotted path, attribute path on CoreConfig).
RESTART_KEYS = {
    "api_listen": ("api_listen",),
    "database_url": ("database_url",),
    "event_loop": ("event_loop",),
    "audit.anchor_path": ("audit", "anchor_path"),
    "plugins.disabled": ("plugins", "disabled"),
}
# Core keys the running daemon re-reads when they change, with what reloading them does.
LIVE_ACTIONS = {
    "log_level": "log level set",
    "api_key": "API key replaced",
    "cors_origin": "CORS origins rebuilt",
    "trusted_proxies": "trusted proxies rebuilt",
    "max_request_body_bytes": "request body limit changed",
    "max_upload_size_bytes": "upload limit changed",
    "rate_limit": "rate limiter reconfigured",
    "audit.retention_days": "audit retention changed",
}
_LOG_LEVELS = {"trace": logging.DEBUG, "warn": logging.WARNING}
_MISSING = object()


class ConfigSetRequest(BaseModel):
    """Set one key of ``config.toml``; ``value`` ``null`` removes the key."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, max_length=200, examples=["rate_limit.api_requests_per_minute"])
    value: Any = Field(..., description="Any JSON value TOML can hold; null removes the key")


class ConfigReloadResponse(BaseModel):
    """What a reload did. ``status``: applied | partial | restart_required | no_changes."""

    status: str
    restart_required: bool
    restart_reasons: list[str]
    hot_actions_applied: list[str]
    noop_changes: list[str]
    warnings: list[str] = []


class ConfigSetResponse(ConfigReloadResponse):
    path: str
    backup: str | None = Field(None, description="File name of the backup under backups/")


def _level(name: str) -> int:
    return _LOG_LEVELS.get(name.lower(), getattr(logging, name.upper(), logging.INFO))


def _section_of(path: str, kernel: Kernel) -> str | None:
    head = path.split(".", 1)[0]
    return head if kernel.config.has_section(head) else None


def plan_reload(kernel: Kernel, candidate: Config) -> ConfigReloadResponse:
    """Compare the live config with ``candidate`` and pin start-only keys to their running values.

    Mutates ``candidate`` (restart keys) and checks that secrets it references resolve; raises
    :class:`BadRequest` (live config untouched) when they do not.
    """
    from librefang.auth import Authenticator
    from librefang.vault import VaultError

    live = kernel.config
    try:
        Authenticator(kernel.secret(candidate.core.api_key))
    except (VaultError, ValueError) as exc:
        raise BadRequest(f"api_key: {exc}", code="invalid_config_value") from None
    before, after = flatten(live.effective()), flatten(candidate.effective())
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, _MISSING) != after.get(k, _MISSING))
    restart, hot, noop = [], [], []
    for key, attrs in RESTART_KEYS.items():
        if any(c == key or c.startswith(key + ".") for c in changed):
            restart.append(f"{key} changed: takes effect after a restart")
            target: Any = candidate.core
            source: Any = live.core
            for attr in attrs[:-1]:
                target, source = getattr(target, attr), getattr(source, attr)
            setattr(target, attrs[-1], getattr(source, attrs[-1]))
    actions: set[str] = set()
    sections: set[str] = set()
    for key in changed:
        if any(key == r or key.startswith(r + ".") for r in RESTART_KEYS):
            continue
        action = next((a for k, a in LIVE_ACTIONS.items() if key == k or key.startswith(k + ".")), None)
        if action is not None:
            actions.add(f"{action} ({key})" if key != "api_key" else action)
        elif (section := _section_of(key, kernel)) is not None:
            sections.add(section)
        else:
            noop.append(key)
    for section in sorted(sections):
        owner = live.section_owners.get(section, "?")
        actions.add(f"[{section}] updated for plugin {owner} (config.reloaded event published)")
    hot = sorted(actions)
    if not changed:
        status = "no_changes"
    elif restart and (hot or noop):
        status = "partial"
    elif restart:
        status = "restart_required"
    else:
        status = "applied"
    warnings = [f"{key}: not used by the core or any loaded plugin" for key in noop]
    return ConfigReloadResponse(
        status=status, restart_required=bool(restart), restart_reasons=restart,
        hot_actions_applied=hot, noop_changes=noop, warnings=warnings,
    )


def apply_candidate(kernel: Kernel, candidate: Config, report: ConfigReloadResponse, app: Any = None) -> None:
    """Make ``candidate`` live: adopt it, reconfigure the edge, set the log level, notify plugins."""
    old_level = kernel.config.core.log_level
    kernel.config.adopt(candidate)
    edge = getattr(kernel, "edge", None)
    if edge is not None:
        edge.configure()
        apps = {id(a): a for a in (app, getattr(kernel.state.get("switch"), "app", None)) if a is not None}
        for target in apps.values():
            target.config["MAX_CONTENT_LENGTH"] = edge.max_body
    if candidate.core.log_level != old_level:
        logging.getLogger().setLevel(_level(candidate.core.log_level))
        quiet_http_loggers(_level(candidate.core.log_level))
    if report.status != "no_changes":
        kernel.bus.publish(
            "config.reloaded",
            {"status": report.status, "changed": report.hot_actions_applied, "restart_required": report.restart_required},
            source="core",
        )


def _lock(kernel: Kernel) -> asyncio.Lock:
    lock = kernel.state.get("config_lock")
    if lock is None:
        lock = kernel.state["config_lock"] = asyncio.Lock()
    return lock


async def reload_config(kernel: Kernel, app: Any = None) -> ConfigReloadResponse:
    """Re-read ``config.toml`` and apply it; 400 (live config kept) when it is invalid."""

    def load() -> Config:
        try:
            return kernel.config.revalidated(read_toml(kernel.config.path))
        except ConfigError as exc:
            raise BadRequest(f"config.toml not applied, live config kept: {exc}", code="invalid_config") from None

    candidate = await asyncio.to_thread(load)
    report = plan_reload(kernel, candidate)
    apply_candidate(kernel, candidate, report, app)
    return report


def _actor() -> tuple[str, str]:
    from quart import g

    return getattr(g, "principal", "api"), getattr(g, "request_id", "")


def add_routes(router: Router) -> None:
    @router.get("/api/config", cost=2)
    async def get_config() -> dict[str, Any]:
        """The effective configuration with every secret redacted."""
        return redact(current_kernel().config.effective())

    @router.get("/api/config/schema", public=True, cost=1)
    async def get_config_schema() -> dict[str, Any]:
        """JSON Schema of the whole configuration, core keys and every plugin section."""
        return current_kernel().config.json_schema()

    @router.post("/api/config/set", cost=10, body=ConfigSetRequest, response=ConfigSetResponse)
    async def set_config(body: ConfigSetRequest) -> ConfigSetResponse:
        """Set one allow-listed key in config.toml (comments kept, backup first), then reload."""
        from quart import current_app

        from librefang.configfile import backup, plan_set, validate_key_path, write_atomic

        kernel = current_kernel()
        parts = validate_key_path(body.path, set(kernel.config.section_models))
        actor, request_id = _actor()
        async with _lock(kernel):
            # Everything is validated before the file is touched: a refused change writes nothing.
            text, candidate = await asyncio.to_thread(plan_set, kernel.config, parts, body.value)
            report = plan_reload(kernel, candidate)
            saved = await asyncio.to_thread(backup, kernel.config.path, kernel.home)
            await asyncio.to_thread(write_atomic, kernel.config.path, text)
            apply_candidate(kernel, candidate, report, current_app)
        leaf = parts[-1]
        await kernel.audit.record(
            "ConfigChange", actor=actor, target=body.path, request_id=request_id,
            detail={"value": redact(body.value, leaf), "status": report.status},
        )
        log.info("config key %s set via API (%s)", body.path, report.status)
        return ConfigSetResponse(path=body.path, backup=saved.name if saved else None, **report.model_dump())

    @router.post("/api/config/reload", cost=10, response=ConfigReloadResponse)
    async def reload() -> ConfigReloadResponse:
        """Re-read config.toml: report what applied live and what needs a restart."""
        from quart import current_app

        kernel = current_kernel()
        actor, request_id = _actor()
        async with _lock(kernel):
            try:
                report = await reload_config(kernel, current_app)
            except BadRequest:
                await kernel.audit.record(
                    "ConfigChange", actor=actor, target="config.toml", request_id=request_id,
                    detail="reload refused: invalid file", outcome="failed",
                )
                raise
        await kernel.audit.record(
            "ConfigChange", actor=actor, target="config.toml", request_id=request_id,
            detail={"reload": report.status, "restart_required": report.restart_reasons,
                    "applied": report.hot_actions_applied},
        )
        return report

"""The kernel: one per process, built by :func:`create_kernel`; tests build their own.

It owns configuration, storage, the event bus, the audit chain, the vault, owned background
tasks, the plugin host and the route table. Plugins receive it in their ``startup`` hook and
reach it from request handlers with :func:`librefang.current_kernel`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librefang import __version__
from librefang.audit import AuditChain
from librefang.bus import EventBus
from librefang.config import Config, default_home
from librefang.errors import ConfigError, PluginError
from librefang.idempotency import IdempotencyStore
from librefang.logstream import LogStream, kernel_secret_values
from librefang.plugins import PluginBound, PluginHost
from librefang.routing import Router, RouteSpec
from librefang.storage import Database
from librefang.tasks import TaskRegistry
from librefang.vault import Vault

log = logging.getLogger("librefang.kernel")

CORE_MIGRATIONS = Path(__file__).parent / "migrations" / "core"
API_V1_PREFIX = "/api/v1/"


def _route_key(method: str, path: str) -> tuple[str, str]:
    # /api/v1/x and /api/x are the same route (the app serves every /api/ route at /api/v1/ too).
    if path.startswith(API_V1_PREFIX):
        path = "/api/" + path[len(API_V1_PREFIX):]
    return method, path


class RouteTable:
    """Every route of every plugin, keyed by (method, path); duplicates are refused."""

    def __init__(self) -> None:
        self.routers: dict[str, list[Router]] = {}
        self.specs: dict[tuple[str, str], RouteSpec] = {}

    def check(self, plugin: str, router: Router) -> None:
        """Raise :class:`PluginError` naming both owners when ``router`` clashes with a route or a
        router name (Quart endpoint namespace) already in the table."""
        if not isinstance(router, Router):
            raise PluginError(f"register_routes expects a librefang.Router, got {type(router).__name__}")
        for owner, routers in self.routers.items():
            if any(r.name == router.name for r in routers):
                raise PluginError(
                    f"plugin {plugin!r} registers a router named {router.name!r}, "
                    f"but plugin {owner!r} already registered a router with that name"
                )
        taken = {_route_key(m, p): spec for (m, p), spec in self.specs.items()}
        for spec in router.specs:
            key = _route_key(spec.method, spec.path)
            other = taken.get(key)
            if other is not None:
                raise PluginError(
                    f"duplicate route {spec.method} {spec.path}: plugin {plugin!r} registers it, "
                    f"but plugin {other.plugin!r} already registered it"
                )
            taken[key] = dataclasses.replace(spec, plugin=plugin)

    def add(self, plugin: str, router: Router) -> None:
        """Add ``router`` as owned by ``plugin`` (see :meth:`check` for what is refused)."""
        self.check(plugin, router)
        for spec in router.specs:
            object.__setattr__(spec, "plugin", plugin)
            self.specs[(spec.method, spec.path)] = spec
        self.routers.setdefault(plugin, []).append(router)

    def remove_plugin(self, plugin: str) -> list[Router]:
        """Drop every route of ``plugin``; returns its routers."""
        routers = self.routers.pop(plugin, [])
        for key in [k for k, s in self.specs.items() if s.plugin == plugin]:
            del self.specs[key]
        return routers

    def by_endpoint(self) -> dict[str, RouteSpec]:
        return {spec.endpoint: spec for spec in self.specs.values()}

    def public_paths(self) -> list[str]:
        return sorted({f"{s.method} {s.path}" for s in self.specs.values() if s.public})

    def of_plugin(self, plugin: str) -> list[str]:
        return sorted(f"{s.method} {s.path}" for s in self.specs.values() if s.plugin == plugin)


@dataclass
class Contributions:
    """What one plugin added to the kernel through its register hooks (saved across a hot reload)."""

    routers: list[Router] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


class Kernel:
    """Process-wide services shared by the core and every plugin."""

    def __init__(self, home: Path, *, load_entry_points: bool = True, plugins: dict[str, Any] | None = None) -> None:
        self.home = home
        self.version = __version__
        self.config = Config.load(home)
        self.db = Database(self.config.database_url())
        self.bus = EventBus()
        self.vault = Vault(home)
        self.tasks = TaskRegistry()
        self.plugins = PluginHost()
        self.routes = RouteTable()
        self.audit = AuditChain(self.db, self._anchor_path())
        self.idempotency = IdempotencyStore(self.db)
        self.logstream = LogStream(kernel_secret_values(self))
        self.security_checks: dict[str, tuple[str, Any]] = {}
        self.services: dict[str, Any] = {}
        self.started_at = time.time()
        self.started = False
        self.start_order: list[str] = []  # plugins whose startup ran, in order (shutdown is reversed)
        self.listen_url = ""
        self.state: dict[str, Any] = {}
        self._load_entry_points = load_entry_points
        self._extra_plugins = dict(plugins or {})
        self.shutdown_requested: Any = None  # set by the server: an asyncio.Event

    def _anchor_path(self) -> Path:
        configured = self.config.core.audit.anchor_path
        return Path(configured) if configured else self.config.data_dir / "audit.anchor"

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load plugins, validate config, migrate storage, and start every plugin.

        A plugin that fails to import, to register, in a register hook or in ``startup`` is
        reported and left out. A bad config value or two plugins claiming the same route stop the
        start with a :class:`ConfigError` / :class:`PluginError` that names the key or both plugins;
        what was already started or opened is stopped and closed again before the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.logstream.attach(asyncio.get_running_loop())
        if self._load_entry_points:
            self.plugins.load_entry_points(self.config.core.plugins.disabled)
        for name, module in self._extra_plugins.items():
            self.plugins.add_plugin(name, module)
        self.plugins.register_all()
        self.collect_config()
        self.db.add_migrations("core", CORE_MIGRATIONS)
        self.plugins.call("register_migrations", register=PluginBound(self._add_migrations))
        await self.db.open()
        await self.db.migrate()
        await self.audit.open()
        self.tasks.spawn("core", self.audit.run_retention(lambda: self.config.core.audit.retention_days),
                         name="core:audit-retention")
        self.tasks.spawn("core", self.idempotency.run_sweeper(), name="core:idempotency-sweep")
        self.collect_routes()
        self.collect_security_checks()
        self._forget_failed()
        for record in self.plugins.loaded():
            await self.start_plugin(record.name)
        self.started = True
        self.plugins.live = True
        for record in self.plugins.records.values():
            await self.audit.record("PluginLoad", target=record.name, detail=record.error or record.version,
                                    outcome="failed" if record.error else "ok")
        await self.audit.record(
            "DaemonStart", detail={"plugins": [r.name for r in self.plugins.loaded()], "version": self.version}
        )

    async def stop(self) -> None:
        """Shut every started plugin down (reverse start order), cancel tasks, close storage."""
        for name in reversed(list(self.start_order)):
            await self.stop_plugin(name)
        was_started, self.started = self.started, False
        self.plugins.live = False
        await self.tasks.cancel_all()
        if was_started:
            try:
                await self.audit.record("DaemonStop", detail={"uptime_seconds": round(self.uptime, 3)})
            except Exception:  # noqa: BLE001 - a broken database must not block shutdown
                log.exception("could not record DaemonStop in the audit chain")
        await self.db.close()
        self.logstream.detach()

    async def start_plugin(self, name: str, *, isolate: bool = True) -> bool:
        """Run one plugin's ``startup``. On failure its tasks are cancelled and its routes, config
        section and checks dropped; with ``isolate`` the plugin is marked failed and False returned,
        without it the exception propagates (hot reload keeps the previous version then)."""
        record = self.plugins.records[name]
        try:
            await self.plugins.acall("startup", plugin=name, isolate=False, kernel=self)
        except Exception as exc:
            await self.tasks.cancel_owner(name)
            if not isolate:
                raise
            self.plugins.fail(name, f"startup failed: {type(exc).__name__}: {exc}")
            self.forget_plugin(name)
            return False
        record.started = True
        self.start_order.append(name)
        return True

    async def stop_plugin(self, name: str) -> None:
        """Run one plugin's ``shutdown`` and cancel the tasks it owns (only if it started)."""
        record = self.plugins.records.get(name)
        if record is None or not record.started:
            return
        try:
            await self.plugins.acall("shutdown", plugin=name, isolate=False, kernel=self)
        except Exception as exc:
            log.error("plugin %s failed in shutdown: %s: %s", name, type(exc).__name__, exc)
        record.started = False
        if name in self.start_order:
            self.start_order.remove(name)
        await self.tasks.cancel_owner(name)

    # -- collection through register hooks -------------------------------------------------------
    def collect_config(self, plugin: str | None = None, *, isolate: bool = True) -> None:
        """Validate each plugin's config section. A bad user value stops start (names the key)."""
        errors: list[str] = []

        def register(owner: str, name: str, model: Any) -> None:
            try:
                self.config.add_section(name, model, owner)
            except ConfigError as exc:
                if "invalid configuration" in str(exc):
                    errors.append(str(exc))
                else:
                    raise PluginError(str(exc)) from None

        self.plugins.call("register_config", plugin=plugin, isolate=isolate, register=PluginBound(register))
        if errors:
            raise ConfigError("; ".join(errors))

    def _add_migrations(self, plugin: str, name: str, folder: Any) -> None:
        if name != plugin and not name.startswith(plugin):
            raise PluginError(f"plugin {plugin!r} may only register migrations named after itself, not {name!r}")
        self.db.add_migrations(name, folder)

    def collect_routes(self, plugin: str | None = None, *, isolate: bool = True) -> None:
        """Gather routers from ``register_routes`` into the route table.

        A router that is not a :class:`Router` fails its plugin; a duplicate (method, path) or router
        name across plugins raises :class:`PluginError` naming both (it is nobody's fault alone)."""
        from librefang.system import system_router

        if plugin is None and "core" not in self.routes.routers:
            self.routes.add("core", system_router())
        pending: list[tuple[str, Router]] = []

        def register(owner: str, router: Any) -> None:
            if not isinstance(router, Router):
                raise PluginError(f"register_routes expects a librefang.Router, got {type(router).__name__}")
            pending.append((owner, router))

        self.plugins.call("register_routes", plugin=plugin, isolate=isolate, register=PluginBound(register))
        for owner, router in pending:
            if self.plugins.records[owner].error is None:  # it may have raised after registering
                self.routes.add(owner, router)
        for record in self.plugins.records.values():
            record.routes = self.routes.of_plugin(record.name)

    def collect_security_checks(self, plugin: str | None = None, *, isolate: bool = True) -> None:
        """Gather ``security_checks`` registrations; a name taken by another owner is refused."""
        from librefang.security import core_security_checks

        if plugin is None:
            for name, fn in core_security_checks().items():
                self.security_checks[name] = ("core", fn)

        def register(owner: str, name: str, fn: Any) -> None:
            current = self.security_checks.get(name)
            if current is not None and current[0] != owner:
                raise PluginError(f"security check {name!r} is already registered by {current[0]!r}")
            self.security_checks[name] = (owner, fn)

        self.plugins.call("security_checks", plugin=plugin, isolate=isolate, register=PluginBound(register))

    def collect_plugin(self, name: str) -> None:
        """Gather one plugin's config section, routes, checks and migration folders, raising on any
        problem (hot reload: the caller restores the previous version)."""
        self.forget_plugin(name)
        self.collect_config(plugin=name, isolate=False)
        self.collect_routes(plugin=name, isolate=False)
        self.collect_security_checks(plugin=name, isolate=False)
        self.plugins.call("register_migrations", plugin=name, isolate=False,
                          register=PluginBound(self._add_migrations))

    def contributions_of(self, name: str) -> Contributions:
        """What plugin ``name`` currently contributes (to put it back after a failed reload)."""
        config = self.config
        return Contributions(
            routers=list(self.routes.routers.get(name, [])),
            sections={s: config.section_models[s] for s, owner in config.section_owners.items() if owner == name},
            checks={k: v for k, v in self.security_checks.items() if v[0] == name},
        )

    def restore_contributions(self, name: str, saved: Contributions) -> None:
        """Replace plugin ``name``'s contributions with ``saved``."""
        self.forget_plugin(name)
        for router in saved.routers:
            self.routes.add(name, router)
        for section, model in saved.sections.items():
            self.config.add_section(section, model, name)
        self.security_checks.update(saved.checks)
        self.plugins.records[name].routes = self.routes.of_plugin(name)

    def forget_plugin(self, name: str) -> None:
        """Drop the routes, config sections and security checks plugin ``name`` registered."""
        self.routes.remove_plugin(name)
        self.config.remove_sections_of(name)
        for key in [k for k, (owner, _) in self.security_checks.items() if owner == name]:
            del self.security_checks[key]
        record = self.plugins.records.get(name)
        if record is not None:
            record.routes = []

    def _forget_failed(self) -> None:
        # A plugin that failed part-way through the register hooks leaves nothing behind.
        for record in self.plugins.records.values():
            if record.error is not None:
                self.forget_plugin(record.name)

    # -- helpers for plugins ----------------------------------------------------------------------
    def secret(self, value: str) -> str:
        """Resolve a config value that may be ``env:NAME`` or ``vault:NAME``."""
        return self.vault.resolve(value)

    @property
    def uptime(self) -> float:
        return time.time() - self.started_at


def create_kernel(home: str | Path | None = None, **kwargs: Any) -> Kernel:
    """Build a kernel for ``home`` (default ``$LIBREFANG_HOME`` or ``~/.librefang``)."""
    return Kernel(Path(home).expanduser() if home else default_home(), **kwargs)

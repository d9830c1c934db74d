"""The kernel: one per process, built by :func:`create_kernel`; tests build their own.

It owns configuration, storage, the event bus, the audit chain, the vault, owned background
tasks, the plugin host and the route table. Plugins receive it in their ``startup`` hook and
reach it from request handlers with :func:`librefang.current_kernel`.
"""

from __future__ import annotations

import asyncio
import logging
import time
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


class RouteTable:
    """Every route of every plugin, keyed by (method, path); duplicates are refused."""

    def __init__(self) -> None:
        self.routers: dict[str, list[Router]] = {}
        self.specs: dict[tuple[str, str], RouteSpec] = {}

    def add(self, plugin: str, router: Router) -> None:
        if not isinstance(router, Router):
            raise PluginError(f"register_routes expects a librefang.Router, got {type(router).__name__}")
        for spec in router.specs:
            key = (spec.method, spec.path)
            other = self.specs.get(key)
            if other is not None and other.plugin != plugin:
                raise PluginError(f"route {spec.method} {spec.path} is already registered by plugin {other.plugin!r}")
        for spec in router.specs:
            object.__setattr__(spec, "plugin", plugin)
            self.specs[(spec.method, spec.path)] = spec
        self.routers.setdefault(plugin, []).append(router)

    def remove_plugin(self, plugin: str) -> None:
        self.routers.pop(plugin, None)
        for key in [k for k, s in self.specs.items() if s.plugin == plugin]:
            del self.specs[key]

    def by_endpoint(self) -> dict[str, RouteSpec]:
        return {spec.endpoint: spec for spec in self.specs.values()}

    def public_paths(self) -> list[str]:
        return sorted({f"{s.method} {s.path}" for s in self.specs.values() if s.public})

    def of_plugin(self, plugin: str) -> list[str]:
        return sorted(f"{s.method} {s.path}" for s in self.specs.values() if s.plugin == plugin)


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
        """Load plugins, validate config, migrate storage, and start every plugin."""
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
        for record in self.plugins.loaded():
            await self.start_plugin(record.name)
        self.started = True
        for record in self.plugins.records.values():
            await self.audit.record("PluginLoad", target=record.name, detail=record.error or record.version,
                                    outcome="failed" if record.error else "ok")
        await self.audit.record(
            "DaemonStart", detail={"plugins": [r.name for r in self.plugins.loaded()], "version": self.version}
        )

    async def stop(self) -> None:
        """Shut every plugin down (reverse order), cancel tasks, close storage."""
        was_started = self.started
        if self.started:
            for record in reversed(self.plugins.loaded()):
                await self.stop_plugin(record.name)
            self.started = False
        await self.tasks.cancel_all()
        if was_started:
            try:
                await self.audit.record("DaemonStop", detail={"uptime_seconds": round(self.uptime, 3)})
            except Exception:  # noqa: BLE001 - a broken database must not block shutdown
                log.exception("could not record DaemonStop in the audit chain")
        await self.db.close()
        self.logstream.detach()

    async def start_plugin(self, name: str) -> bool:
        """Run one plugin's ``startup``; on failure cancel its tasks and drop its routes."""
        record = self.plugins.records[name]
        await self.plugins.acall("startup", plugin=name, kernel=self)
        if record.error:
            await self.tasks.cancel_owner(name)
            self.routes.remove_plugin(name)
            return False
        record.started = True
        return True

    async def stop_plugin(self, name: str) -> None:
        """Run one plugin's ``shutdown`` and cancel the tasks it owns."""
        record = self.plugins.records.get(name)
        if record is None or not record.started:
            return
        try:
            await self.plugins.acall("shutdown", plugin=name, isolate=False, kernel=self)
        except Exception as exc:
            log.error("plugin %s failed in shutdown: %s", name, exc)
        record.started = False
        await self.tasks.cancel_owner(name)

    # -- collection through register hooks -------------------------------------------------------
    def collect_config(self, plugin: str | None = None) -> None:
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

        self.plugins.call("register_config", plugin=plugin, register=PluginBound(register))
        if errors:
            raise ConfigError("; ".join(errors))

    def _add_migrations(self, plugin: str, name: str, folder: Any) -> None:
        if name != plugin and not name.startswith(plugin):
            raise PluginError(f"plugin {plugin!r} may only register migrations named after itself, not {name!r}")
        self.db.add_migrations(name, folder)

    def collect_routes(self, plugin: str | None = None) -> None:
        """Gather routers from ``register_routes`` into the route table."""
        from librefang.system import system_router

        if plugin is None and "core" not in self.routes.routers:
            self.routes.add("core", system_router())
        self.plugins.call("register_routes", plugin=plugin, register=PluginBound(self.routes.add))
        for record in self.plugins.records.values():
            record.routes = self.routes.of_plugin(record.name)

    def collect_security_checks(self, plugin: str | None = None) -> None:
        from librefang.security import core_security_checks

        if plugin is None:
            for name, fn in core_security_checks().items():
                self.security_checks[name] = ("core", fn)

        def register(owner: str, name: str, fn: Any) -> None:
            self.security_checks[name] = (owner, fn)

        self.plugins.call("security_checks", plugin=plugin, register=PluginBound(register))

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

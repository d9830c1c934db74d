"""The plugin host: discovery, isolation, hook calls and per-plugin lifecycle.

Plugins are found through the ``librefang.plugins`` entry-point group (one loader:
``importlib.metadata``), selected by ``LIBREFANG_LOAD_PLUGINS`` (allow-list; empty means none) and
``[plugins] disabled``. A plugin that raises on import, on registration or in ``startup`` is
reported (``/api/status``, ``librefang doctor``) and the daemon goes on without it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from librefang import hookspecs
from librefang.markers import PROJECT

log = logging.getLogger("librefang.plugins")
trace_log = logging.getLogger("librefang.plugins.trace")

ENTRY_POINT_GROUP = "librefang.plugins"


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` when it is awaitable (hook implementations may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass
class PluginRecord:
    """One plugin the host knows about, loaded or failed."""

    name: str
    module_name: str
    distribution: str = ""
    version: str = ""
    module: Any = None
    error: str | None = None
    requires: set[str] = field(default_factory=set)
    source_dir: Path | None = None
    hooks: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    reload_error: str | None = None
    started: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.module is not None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module_name,
            "loaded": self.ok,
            "error": self.error,
            "hooks": sorted(self.hooks),
            "routes": self.routes,
            "reloads": self.reloads,
            "reload_error": self.reload_error,
        }


def _selected(name: str, disabled: Iterable[str]) -> bool:
    allow = os.environ.get("LIBREFANG_LOAD_PLUGINS")
    if allow is not None:
        allowed = {p.strip() for p in allow.split(",") if p.strip()}
        if name not in allowed:
            return False
    return name not in set(disabled)


def discover(disabled: Iterable[str] = ()) -> list[PluginRecord]:
    """Entry points of the ``librefang.plugins`` group that are selected (not yet imported)."""
    records: dict[str, PluginRecord] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _selected(ep.name, disabled) or ep.name in records:
            continue
        dist = ep.dist
        requires: set[str] = set()
        if dist is not None:
            for req in dist.requires or ():
                match = re.match(r"^\s*([A-Za-z0-9_.\-]+)", req)
                if match and "extra ==" not in req:
                    requires.add(match.group(1).lower().replace("_", "-"))
        records[ep.name] = PluginRecord(
            name=ep.name,
            module_name=ep.value.split(":")[0],
            distribution=dist.metadata["Name"] if dist is not None else "",
            version=dist.version if dist is not None else "",
            requires=requires,
        )
    return list(records.values())


def _import_fresh(module_name: str) -> types.ModuleType:
    """Import ``module_name``, first dropping its top-level package from ``sys.modules``."""
    top = module_name.split(".")[0]
    for mod in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[mod]
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _source_dir(module: types.ModuleType) -> Path | None:
    top = sys.modules.get(module.__name__.split(".")[0])
    file = getattr(top, "__file__", None)
    return Path(file).resolve().parent if file else None


def order_by_dependencies(records: list[PluginRecord]) -> list[PluginRecord]:
    """Order plugins so that each comes after the plugins its distribution requires."""
    by_dist = {r.distribution.lower().replace("_", "-"): r for r in records if r.distribution}
    ordered: list[PluginRecord] = []
    seen: set[str] = set()

    def visit(record: PluginRecord, stack: set[str]) -> None:
        if record.name in seen or record.name in stack:
            return
        stack.add(record.name)
        for dep in sorted(record.requires):
            if dep in by_dist:
                visit(by_dist[dep], stack)
        seen.add(record.name)
        ordered.append(record)

    for record in sorted(records, key=lambda r: r.name):
        visit(record, set())
    return ordered


class PluginHost:
    """Owns the pluggy manager and the records of every plugin."""

    def __init__(self) -> None:
        self.records: dict[str, PluginRecord] = {}
        self.pm = self._new_manager()
        self.tracing = os.environ.get("LIBREFANG_TRACE_PLUGINS", "") in {"1", "true", "yes", "on"}

    @staticmethod
    def _new_manager() -> pluggy.PluginManager:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        return pm

    # -- loading -----------------------------------------------------------------------------
    def load_entry_points(self, disabled: Iterable[str] = ()) -> None:
        """Discover and import every selected installed plugin, isolating failures."""
        for record in discover(disabled):
            self.records[record.name] = record
            try:
                record.module = importlib.import_module(record.module_name)
                record.source_dir = _source_dir(record.module)
            except Exception as exc:  # a broken plugin must not stop the daemon
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                log.error("plugin %s failed to import: %s", record.name, exc, exc_info=True)

    def add_plugin(self, name: str, module: Any, *, distribution: str = "", version: str = "") -> PluginRecord:
        """Add an already-imported plugin object (tests, embedding). Replaces one of the same name."""
        record = PluginRecord(
            name=name,
            module_name=getattr(module, "__name__", name),
            distribution=distribution,
            version=version,
            module=module,
        )
        if isinstance(module, types.ModuleType):
            record.source_dir = _source_dir(module)
        self.records[name] = record
        return record

    def fail(self, name: str, message: str) -> None:
        """Mark a plugin failed and take its hooks out of the manager."""
        record = self.records[name]
        record.error = message
        log.error("plugin %s disabled: %s", name, message)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    def register_all(self) -> None:
        """Add plugin hookspecs, register every imported plugin and check for unknown hooks."""
        for record in self.loaded():
            specs = getattr(record.module, "hookspecs", None)
            if specs is not None:
                try:
                    self.pm.add_hookspecs(specs)
                except Exception as exc:
                    record.error = f"bad hookspecs: {exc}"
        for record in self.loaded():
            self._register(record)
        self._check_pending()

    def _register(self, record: PluginRecord) -> None:
        try:
            self.pm.register(record.module, name=record.name)
            record.hooks = [h.name for h in self.pm.get_hookcallers(record.module) or []]
        except Exception as exc:
            record.error = f"registration failed: {exc}"
            log.error("plugin %s failed to register: %s", record.name, exc)

    def _check_pending(self) -> None:
        for _ in range(len(self.records) + 1):
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin) or ""
                if name not in self.records:
                    raise
                self.fail(name, f"unknown hook: {exc}")

    def loaded(self) -> list[PluginRecord]:
        """Plugins that imported and are not failed, in dependency order."""
        return order_by_dependencies([r for r in self.records.values() if r.ok])

    # -- hook calls ----------------------------------------------------------------------------
    def impls(self, hook_name: str, plugin: str | None = None) -> list[tuple[str, Callable[..., Any]]]:
        """(plugin name, function) of every implementation of ``hook_name``, in plugin order."""
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None:
            return []
        found = {impl.plugin_name: impl.function for impl in caller.get_hookimpls()}
        order = [r.name for r in self.loaded()]
        return [(name, found[name]) for name in order if name in found and (plugin is None or name == plugin)]

    def _trace(self, hook_name: str, plugin: str, started: float, error: BaseException | None) -> None:
        if self.tracing:
            ms = (time.perf_counter() - started) * 1000
            trace_log.info("hook %s plugin=%s %.2fms%s", hook_name, plugin, ms, f" error={error!r}" if error else "")

    def call(
        self, hook_name: str, *, plugin: str | None = None, isolate: bool = True, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call a hook synchronously on each plugin; a raising plugin is marked failed (if ``isolate``)."""
        results = []
        for name, fn in self.impls(hook_name, plugin):
            started = time.perf_counter()
            try:
                value = fn(**self._kwargs_for(fn, kwargs, name))
            except Exception as exc:
                self._trace(hook_name, name, started, exc)
                if not isolate:
                    raise
                self.fail(name, f"{hook_name} failed: {type(exc).__name__}: {exc}")
                log.debug("%s", traceback.format_exc())
                continue
            self._trace(hook_name, name, started, None)
            results.append((name, value))
        return results

    async def acall(
        self, hook_name: str, *, plugin: str | None = None, isolate: bool = True, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call a hook on each plugin, awaiting coroutine results; failures isolated as in :meth:`call`."""
        results = []
        for name, fn in self.impls(hook_name, plugin):
            started = time.perf_counter()
            try:
                value = await await_me_maybe(fn(**self._kwargs_for(fn, kwargs, name)))
            except Exception as exc:
                self._trace(hook_name, name, started, exc)
                if not isolate:
                    raise
                self.fail(name, f"{hook_name} failed: {type(exc).__name__}: {exc}")
                log.debug("%s", traceback.format_exc())
                continue
            self._trace(hook_name, name, started, None)
            results.append((name, value))
        return results

    @staticmethod
    def _kwargs_for(fn: Callable[..., Any], kwargs: dict[str, Any], plugin: str) -> dict[str, Any]:
        """Pass only the arguments an implementation names (pluggy's convention); callables
        given as ``register`` are bound to the calling plugin's name."""
        wanted = getattr(fn, "_librefang_args", None)
        if wanted is None:
            wanted = set(inspect.signature(fn).parameters)
            try:
                fn._librefang_args = wanted  # type: ignore[attr-defined]
            except AttributeError:
                pass
        out = {}
        for key, value in kwargs.items():
            if key not in wanted:
                continue
            if isinstance(value, PluginBound):
                value = value.bind(plugin)
            out[key] = value
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [self.records[name].describe() for name in sorted(self.records)]


class PluginBound:
    """A ``register`` callback that learns which plugin is calling it: ``fn(plugin, *args)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def bind(self, plugin: str) -> Callable[..., Any]:
        def register(*args: Any, **kwargs: Any) -> Any:
            return self.fn(plugin, *args, **kwargs)

        return register


def reimport(record: PluginRecord) -> types.ModuleType:
    """Import a plugin's module afresh from its source (hot reload)."""
    return _import_fresh(record.module_name)

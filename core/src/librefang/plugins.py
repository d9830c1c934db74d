"""The plugin host: discovery, isolation, hook calls and per-plugin lifecycle.

Plugins are found through the ``librefang.plugins`` entry-point group (one loader:
``importlib.metadata``), selected by ``LIBREFANG_LOAD_PLUGINS`` (allow-list; empty means none) and
``[plugins] disabled``. A plugin that raises on import, on registration or in ``startup`` is
reported (``/api/status``, ``librefang doctor``) and the daemon goes on without it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from librefang import hookspecs, hookstate
from librefang.errors import PluginError
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
    attr: str = ""
    distribution: str = ""
    version: str = ""
    module: Any = None
    error: str | None = None
    requires: set[str] = field(default_factory=set)
    source_dir: Path | None = None
    source_file: Path | None = None  # a single-module plugin: only this file of source_dir is its source
    hooks: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    reload_error: str | None = None
    started: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        # module/error (load, failure, hot reload), distribution/requires (order): any change of a
        # record invalidates the host's kept hook lists. Records change only at start and on reload.
        object.__setattr__(self, name, value)
        hookstate.changed()

    @property
    def ok(self) -> bool:
        """Imported, registered and not failed."""
        return self.error is None and self.module is not None

    def owns_path(self, path: Path) -> bool:
        """Whether a changed file belongs to this plugin's source (hot reload)."""
        if self.source_dir is None:
            return False
        if self.source_file is not None:
            return path == self.source_file
        return path.is_relative_to(self.source_dir)

    def describe(self) -> dict[str, Any]:
        """The JSON shape shown in ``GET /api/status`` (``plugins[]``) and ``librefang plugins``."""
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
            module_name=ep.module,
            attr=ep.attr or "",
            distribution=dist.metadata["Name"] if dist is not None else "",
            version=dist.version if dist is not None else "",
            requires=requires,
        )
    return list(records.values())


def _top_name(module_name: str) -> str:
    return module_name.split(".")[0]


def _plugin_object(module: types.ModuleType, attr: str) -> Any:
    """The object an entry point names: the module itself, or ``module:attr``."""
    obj: Any = module
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


# Python validates a cached .pyc by the source's mtime (whole seconds) and size, so an edit made in
# the same second as the previous import could be served from a stale cache. During a hot reload we
# point the cache at a folder that never exists (and write none) so every module compiles from source.
_NO_PYCACHE = str(Path(tempfile.gettempdir()) / f"librefang-reload-nocache-{os.getpid()}")


@dataclass
class FreshImport:
    """A plugin imported afresh for a hot reload; :meth:`rollback` puts the previous modules back."""

    plugin: Any
    top: str
    previous: dict[str, types.ModuleType]

    def rollback(self) -> None:
        """Forget the new modules and restore the ones that were replaced."""
        _drop_modules(self.top)
        sys.modules.update(self.previous)


def _drop_modules(top: str) -> dict[str, types.ModuleType]:
    dropped = {}
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        dropped[name] = sys.modules.pop(name)
    return dropped


def import_fresh(module_name: str, attr: str = "") -> FreshImport:
    """Import ``module_name`` afresh from source, first dropping its top-level package from
    ``sys.modules``. On failure the previous modules are back in place before the error propagates."""
    top = _top_name(module_name)
    if top == "librefang":
        raise PluginError("the core (librefang) cannot be hot-reloaded; restart the daemon")
    previous = _drop_modules(top)
    importlib.invalidate_caches()
    saved = sys.pycache_prefix, sys.dont_write_bytecode
    sys.pycache_prefix, sys.dont_write_bytecode = _NO_PYCACHE, True
    try:
        module = importlib.import_module(module_name)
        plugin = _plugin_object(module, attr)
    except BaseException:
        _drop_modules(top)
        sys.modules.update(previous)
        raise
    finally:
        sys.pycache_prefix, sys.dont_write_bytecode = saved
    return FreshImport(plugin=plugin, top=top, previous=previous)


def _source_location(module_name: str) -> tuple[Path | None, Path | None]:
    """(folder to watch, single file or None) of the top-level package of ``module_name``.

    Uses the import system's spec, so it works for a plugin whose import failed too (the folder is
    still watched in ``--dev``, and fixing the file loads the plugin)."""
    top = _top_name(module_name)
    try:
        spec = sys.modules[top].__spec__ if top in sys.modules else importlib.util.find_spec(top)
    except Exception:  # a broken parent package: nothing to watch
        return None, None
    if spec is None:
        return None, None
    locations = list(spec.submodule_search_locations or [])
    if locations:  # a package: watch its folder (the first one of a namespace package)
        return Path(locations[0]).resolve(), None
    if spec.origin and spec.origin not in {"built-in", "frozen"}:
        file = Path(spec.origin).resolve()
        return file.parent, file
    return None, None


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


def tracing_enabled() -> bool:
    """``LIBREFANG_TRACE_PLUGINS=1`` logs every hook call (plugin, duration, error) at INFO."""
    return os.environ.get("LIBREFANG_TRACE_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


class PluginHost:
    """Owns the pluggy manager and the records of every plugin.

    Until :attr:`live` is set (the kernel sets it once every plugin started), a plugin whose hook
    raises is marked failed and taken out, so the daemon starts without it. Afterwards a raising
    hook is logged and its result skipped, but the plugin keeps serving (and is still shut down).
    """

    def __init__(self) -> None:
        self.records = hookstate.TrackedRecords()
        self.tracing = tracing_enabled()
        self.live = False
        self.pm = self._new_manager()
        # Hook calls happen several times per agent turn: the dependency order and each hook's
        # implementation list are kept with the generation they were computed at (see hookstate).
        self._loaded_cache: tuple[int, list[PluginRecord]] | None = None
        self._impls_cache: dict[tuple[str, str | None], tuple[int, tuple[_Impl, ...]]] = {}

    @property
    def records(self) -> dict[str, PluginRecord]:
        """Every plugin the host knows about, by name (changes invalidate the kept hook lists)."""
        return self._records

    @records.setter
    def records(self, value: dict[str, PluginRecord]) -> None:
        self._records = value if isinstance(value, hookstate.TrackedRecords) else hookstate.TrackedRecords(value)
        hookstate.changed()

    @property
    def pm(self) -> pluggy.PluginManager:
        """The pluggy manager (a hot reload swaps it; the kept hook lists follow)."""
        return self._pm

    @pm.setter
    def pm(self, value: pluggy.PluginManager) -> None:
        if not isinstance(value, hookstate.TrackedManager):  # a manager built elsewhere: make its changes visible too
            value.__class__ = hookstate.TrackedManager
        self._pm = value
        hookstate.changed()

    def _new_manager(self) -> pluggy.PluginManager:
        pm = hookstate.TrackedManager(PROJECT)
        pm.add_hookspecs(hookspecs)
        if self.tracing:
            pm.add_hookcall_monitoring(_trace_before, _trace_after)
        return pm

    # -- loading -----------------------------------------------------------------------------
    def load_entry_points(self, disabled: Iterable[str] = ()) -> None:
        """Discover and import every selected installed plugin, isolating failures."""
        for record in discover(disabled):
            self.records[record.name] = record
            try:
                module = importlib.import_module(record.module_name)
                record.module = _plugin_object(module, record.attr)
            except Exception as exc:  # a broken plugin must not stop the daemon
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                log.error("plugin %s failed to import: %s", record.name, exc, exc_info=True)
            record.source_dir, record.source_file = _source_location(record.module_name)

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
            record.source_dir, record.source_file = _source_location(module.__name__)
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
                    self.fail(record.name, f"bad hookspecs: {exc}")
        for record in self.loaded():
            self._register(record)
        self._check_pending()

    def _register(self, record: PluginRecord) -> None:
        try:
            self.pm.register(record.module, name=record.name)
            record.hooks = [h.name for h in self.pm.get_hookcallers(record.module) or []]
        except Exception as exc:
            self.fail(record.name, f"registration failed: {exc}")

    def _check_pending(self) -> None:
        # check_pending raises for the first plugin with an unknown hook; fail it and look again.
        for _ in range(len(self.records) + 1):
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin) or ""
                if name not in self.records:
                    raise
                self.fail(name, f"unknown hook: {exc}")

    def build_manager(self, replace: dict[str, Any]) -> pluggy.PluginManager:
        """A new manager with every loaded plugin, the modules in ``replace`` swapped in (hot reload).

        Raises on any problem (bad hookspecs, a hook that is unknown or has a bad signature) and
        leaves :attr:`pm` untouched, so the caller can keep the current version."""
        modules = {r.name: r.module for r in self.loaded()}
        modules.update(replace)
        pm = self._new_manager()
        for module in modules.values():
            specs = getattr(module, "hookspecs", None)
            if specs is not None:
                pm.add_hookspecs(specs)
        for name, module in modules.items():
            pm.register(module, name=name)
        pm.check_pending()
        return pm

    def loaded(self) -> list[PluginRecord]:
        """Plugins that imported and are not failed, in dependency order."""
        generation = hookstate.generation
        cached = self._loaded_cache
        if cached is None or cached[0] != generation:
            cached = self._loaded_cache = (generation, order_by_dependencies([r for r in self.records.values() if r.ok]))
        return list(cached[1])

    # -- hook calls ----------------------------------------------------------------------------
    def impls(self, hook_name: str, plugin: str | None = None) -> list[tuple[str, Callable[..., Any]]]:
        """(plugin name, function) of every implementation of ``hook_name``, in plugin order, except that
        ``@hookimpl(tryfirst=True)`` implementations come first and ``trylast=True`` ones last."""
        return [(name, fn) for name, fn, _ in self._impls(hook_name, plugin)]

    def _impls(self, hook_name: str, plugin: str | None) -> tuple[_Impl, ...]:
        """(plugin name, function, argument names) of each implementation, kept between calls."""
        # The kept answer is valid while nothing it derives from changed (see hookstate).
        key = (hook_name, plugin)
        cached = self._impls_cache.get(key)
        if cached is not None and cached[0] == hookstate.generation:
            return cached[1]
        generation = hookstate.generation  # read first: a change made while computing makes the entry stale
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None:
            result: tuple[_Impl, ...] = ()
        else:
            found = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
            order = [r.name for r in self.loaded()]
            chosen = [found[name] for name in order if name in found and (plugin is None or name == plugin)]
            chosen.sort(key=lambda impl: 0 if impl.tryfirst else 2 if impl.trylast else 1)  # stable: keeps plugin order
            result = tuple((impl.plugin_name, impl.function, hookstate.arg_names(impl.function)) for impl in chosen)
        if len(self._impls_cache) > 1024:  # bounded: hook names x plugin filters
            self._impls_cache.clear()
        self._impls_cache[key] = (generation, result)
        return result

    def _trace(self, hook_name: str, plugin: str, started: float, error: BaseException | None) -> None:
        if self.tracing:
            ms = (time.perf_counter() - started) * 1000
            trace_log.info("hook %s plugin=%s %.2fms%s", hook_name, plugin, ms, f" error={error!r}" if error else "")

    def _hook_failed(self, hook_name: str, plugin: str, exc: Exception) -> None:
        if self.live:  # a running plugin keeps serving; the failure is logged with its traceback
            log.error("plugin %s failed in hook %s: %s: %s", plugin, hook_name, type(exc).__name__, exc,
                      exc_info=exc)
            return
        self.fail(plugin, f"{hook_name} failed: {type(exc).__name__}: {exc}")
        log.debug("%s", "".join(traceback.format_exception(exc)))

    def call(
        self, hook_name: str, *, plugin: str | None = None, isolate: bool = True, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call a hook synchronously on each plugin (or only on ``plugin``). An ``async def``
        implementation is an error here (use :meth:`acall` for hooks that may be async).

        With ``isolate`` a raising implementation is reported (see :class:`PluginHost`) and skipped;
        without it the exception propagates."""
        impls = self._impls(hook_name, plugin)
        if not impls:
            return []
        results = []
        tracing = self.tracing
        direct = _direct_kwargs(kwargs)
        names = frozenset(kwargs) if direct else frozenset()
        for name, fn, wanted in impls:
            started = time.perf_counter() if tracing else 0.0
            try:
                if direct and names <= wanted:  # it takes every argument: pass them as given
                    value = fn(**kwargs)
                else:
                    value = fn(**self._kwargs_for(fn, kwargs, name))
                if inspect.iscoroutine(value):  # it would never run: say so instead of losing it
                    value.close()
                    raise PluginError(f"{hook_name} is called synchronously; implement it with def, not async def")
            except Exception as exc:
                self._trace(hook_name, name, started, exc)
                if not isolate:
                    raise
                self._hook_failed(hook_name, name, exc)
                continue
            if tracing:
                self._trace(hook_name, name, started, None)
            results.append((name, value))
        return results

    async def acall(
        self, hook_name: str, *, plugin: str | None = None, isolate: bool = True, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call a hook on each plugin, awaiting coroutine results; failures handled as in :meth:`call`."""
        impls = self._impls(hook_name, plugin)
        if not impls:
            return []
        results = []
        tracing = self.tracing
        direct = _direct_kwargs(kwargs)
        names = frozenset(kwargs) if direct else frozenset()
        for name, fn, wanted in impls:
            started = time.perf_counter() if tracing else 0.0
            try:
                if direct and names <= wanted:  # it takes every argument: pass them as given
                    value = fn(**kwargs)
                else:
                    value = fn(**self._kwargs_for(fn, kwargs, name))
                # inline await_me_maybe (no extra coroutine per call); None and coroutines decided fast
                if value is not None and (
                    type(value) is types.CoroutineType
                    or (hookstate.awaitable_types.get(type(value), True) and hookstate.is_awaitable(value))
                ):
                    value = await value
            except Exception as exc:
                self._trace(hook_name, name, started, exc)
                if not isolate:
                    raise
                self._hook_failed(hook_name, name, exc)
                continue
            if tracing:
                self._trace(hook_name, name, started, None)
            results.append((name, value))
        return results

    @staticmethod
    def _kwargs_for(fn: Callable[..., Any], kwargs: dict[str, Any], plugin: str) -> dict[str, Any]:
        """Pass only the arguments an implementation names (pluggy's convention); callables
        given as ``register`` are bound to the calling plugin's name."""
        wanted = hookstate.arg_names(fn)
        out = {}
        for key, value in kwargs.items():
            if key not in wanted:
                continue
            if isinstance(value, PluginBound):
                value = value.bind(plugin)
            out[key] = value
        return out

    def describe(self) -> list[dict[str, Any]]:
        """Every known plugin (loaded or failed), sorted by name."""
        return [self.records[name].describe() for name in sorted(self.records)]


_Impl = tuple[str, Callable[..., Any], frozenset[str]]


def _direct_kwargs(kwargs: dict[str, Any]) -> bool:
    """Whether the hook arguments can be passed unchanged (no ``register`` callback to bind per plugin)."""
    for value in kwargs.values():
        if isinstance(value, PluginBound):
            return False
    return True


def _trace_before(hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
    # Calls made through ``pm.hook.<name>(...)`` (plugin-offered hooks); values are not logged.
    trace_log.info("hook %s via pm.hook plugins=%s", hook_name, [impl.plugin_name for impl in hook_impls])


def _trace_after(outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
    error = outcome.exception
    if error is not None:
        trace_log.info("hook %s via pm.hook error=%r", hook_name, error)


class PluginBound:
    """A ``register`` callback that learns which plugin is calling it: ``fn(plugin, *args)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def bind(self, plugin: str) -> Callable[..., Any]:
        """The callback a plugin receives: the plugin's name is passed first."""

        def register(*args: Any, **kwargs: Any) -> Any:
            return self.fn(plugin, *args, **kwargs)

        return register


def reimport(record: PluginRecord) -> FreshImport:
    """Import a plugin's module afresh from its source (hot reload); see :func:`import_fresh`."""
    return import_fresh(record.module_name, record.attr)

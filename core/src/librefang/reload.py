"""Hot reload for development (``librefang start --dev``), ARCHITECTURE §3.

Quart cannot change its routes once it served a request, so a reload never mutates an app. The
:class:`Reloader` watches the source folder of every plugin with watchfiles. When a file of plugin X
changes, it runs one transaction:

1. import X afresh (a syntax error stops here: the old modules are put back);
2. build a new plugin manager with the new X (an unknown hook or a bad hook signature stops here);
3. gather new X's config section, routes, checks and migration folders and build a new Quart app
   (a bad config value, a duplicate route or a raising register hook stops here). Registration has
   no side effects, so old X is still running and serving;
4. run old X's ``shutdown`` and cancel its tasks, migrate new X's tables, run new X's ``startup``;
5. swap the new app into the ASGI switch. Requests already running finish on the old app, which
   is shut down once they have drained.

When a step fails, the previous manager, modules and contributions are put back (after step 4
old X is started again) and the old app, never swapped out, keeps serving. The error is logged and shown as
``plugins[].reload_error`` in ``GET /api/status``. The other plugins are never stopped: their state
(kept in the kernel, the database, or their own modules) is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from librefang.app import build_app
from librefang.plugins import reimport

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel
    from librefang.server import AppSwitch

log = logging.getLogger("librefang.reload")
WATCHED_SUFFIXES = (".py", ".toml", ".json", ".html", ".js", ".css")
HISTORY_LIMIT = 50
RETIRE_TIMEOUT = 60.0  # longest wait for the old app's open requests (a WebSocket may never end)


class Reloader:
    """Watches plugin sources and reloads the plugin that changed."""

    def __init__(self, kernel: Kernel, switch: AppSwitch) -> None:
        self.kernel = kernel
        self.switch = switch
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self.watching = asyncio.Event()  # set once the watcher is installed (tests wait for it)
        self.history: list[dict[str, Any]] = []

    def folders(self) -> list[Path]:
        """The folders to watch: one per plugin with a known source (the core is never watched)."""
        import librefang

        core_dir = Path(librefang.__file__).resolve().parent
        found = {r.source_dir for r in self.kernel.plugins.records.values() if r.source_dir is not None}
        return sorted(f for f in found if f != core_dir and not core_dir.is_relative_to(f))

    def plugins_for(self, changed: set[Path]) -> list[str]:
        """Names of the plugins a set of changed files belongs to."""
        names = set()
        for path in changed:
            if not path.name.endswith(WATCHED_SUFFIXES):
                continue
            for record in self.kernel.plugins.records.values():
                if record.owns_path(path):
                    names.add(record.name)
        return sorted(names)

    def start(self) -> None:
        """Start watching (a task owned by the core, cancelled when the kernel stops)."""
        self.kernel.tasks.spawn("core", self._watch(), name="core:reloader")

    async def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    async def _watch(self) -> None:
        from watchfiles import awatch

        folders = self.folders()
        if not folders:
            self.watching.set()
            return
        # yield_on_timeout: the first (empty) yield tells us the OS watches are in place.
        watcher = awatch(*folders, stop_event=self._stop, debounce=150, step=50, yield_on_timeout=True,
                         rust_timeout=500)
        async for changes in watcher:
            if not self.watching.is_set():
                self.watching.set()
                log.info("hot reload: watching %d plugin folders: %s", len(folders), ", ".join(map(str, folders)))
            if not changes:
                continue
            for name in self.plugins_for({Path(path) for _change, path in changes}):
                await self.reload(name)

    async def reload(self, name: str) -> bool:
        """Reload plugin ``name``; True when the new version is live, False when the old one stays."""
        async with self._lock:
            started = time.perf_counter()
            try:
                ok, error = await self._reload(name)
            except Exception as exc:  # a bug here must not kill the watcher
                log.exception("reload of plugin %s crashed", name)
                ok, error = False, f"{type(exc).__name__}: {exc}"
            record = self.kernel.plugins.records[name]
            record.reload_error = error
            if ok:
                record.reloads += 1
                record.loaded_at = time.time()
            self.history.append({"plugin": name, "ok": ok, "error": error, "at": time.time()})
            del self.history[:-HISTORY_LIMIT]
            ms = (time.perf_counter() - started) * 1000
            if ok:
                log.info("reloaded plugin %s in %.0f ms", name, ms)
            else:
                log.error("reload of plugin %s failed, previous version kept: %s", name, error)
            await self.kernel.audit.record(
                "PluginReload", target=name, detail=error or f"{ms:.0f} ms", outcome="ok" if ok else "failed"
            )
            return ok

    async def _reload(self, name: str) -> tuple[bool, str | None]:
        kernel = self.kernel
        host = kernel.plugins
        record = host.records[name]
        try:
            fresh = reimport(record)
        except Exception as exc:  # syntax error, failing import: nothing was touched
            return False, f"import failed: {type(exc).__name__}: {exc}"
        try:
            new_pm = host.build_manager({name: fresh.plugin})
        except Exception as exc:  # unknown hook, bad hook signature, clashing hookspecs
            fresh.rollback()
            return False, f"registration failed: {type(exc).__name__}: {exc}"

        old = _Saved(kernel, name)
        try:  # gather what the new version registers while the old one still runs: no side effects
            host.pm = new_pm
            record.module, record.error = fresh.plugin, None
            record.hooks = [h.name for h in new_pm.get_hookcallers(fresh.plugin) or []]
            kernel.collect_plugin(name)
            app = build_app(kernel)
        except Exception as exc:  # bad config value, duplicate route, a raising register hook
            fresh.rollback()
            await old.restore(restart=False)
            return False, f"{type(exc).__name__}: {exc}"

        host.pm = old.pm  # the old version's shutdown runs through the manager that knows it
        await kernel.stop_plugin(name)
        host.pm = new_pm
        try:
            await kernel.db.migrate([n for n in kernel.db.migrations if n == name or n.startswith(name)])
            await app.startup()
            await kernel.start_plugin(name, isolate=False)
        except Exception as exc:
            await _shutdown_app(app)
            fresh.rollback()
            await old.restore(restart=True)
            return False, f"{type(exc).__name__}: {exc}"
        old_app = self.switch.swap(app)
        kernel.tasks.spawn("core", _retire(self.switch, old_app), name="core:retire-app")
        return True, None


class _Saved:
    """The state of one plugin before a reload, to put back when the new version fails."""

    def __init__(self, kernel: Kernel, name: str) -> None:
        record = kernel.plugins.records[name]
        self.kernel = kernel
        self.name = name
        self.pm = kernel.plugins.pm
        self.module = record.module
        self.error = record.error
        self.hooks = list(record.hooks)
        self.was_started = record.started
        self.contributions = kernel.contributions_of(name)

    async def restore(self, *, restart: bool) -> None:
        """Put the old version back; ``restart`` when it was already stopped for the new one."""
        kernel = self.kernel
        record = kernel.plugins.records[self.name]
        kernel.plugins.pm = self.pm
        record.module, record.error, record.hooks = self.module, self.error, self.hooks
        kernel.restore_contributions(self.name, self.contributions)
        if restart:
            await kernel.tasks.cancel_owner(self.name)  # whatever the failed new version spawned
            if self.was_started:
                await kernel.start_plugin(self.name)


async def _shutdown_app(app: Any) -> None:
    try:
        await app.shutdown()
    except Exception:  # noqa: BLE001 - an app that is being thrown away
        log.debug("app shutdown failed", exc_info=True)


async def _retire(switch: AppSwitch, app: Any) -> None:
    """Let requests on the old app finish, then shut it down."""
    try:
        async with asyncio.timeout(RETIRE_TIMEOUT):
            await switch.drained(app)
    except TimeoutError:
        log.warning("%d requests still open on a retired app after %.0f s", switch.active(app), RETIRE_TIMEOUT)
    finally:
        await _shutdown_app(app)

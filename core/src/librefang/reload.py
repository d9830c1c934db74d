"""Hot reload for development (``librefang start --dev``).

Watches every loaded plugin's source folder with watchfiles. On a change to plugin X: import X
afresh; if that fails the old version keeps serving. Otherwise stop old X, register new X, gather
its config, routes and checks, build a new app and start new X; if any of that fails, put old X
back. Only then is the new app swapped in. Other plugins are not restarted and keep their state.
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


class Reloader:
    """Watches plugin sources and reloads the plugin that changed."""

    def __init__(self, kernel: Kernel, switch: AppSwitch) -> None:
        self.kernel = kernel
        self.switch = switch
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self.history: list[dict[str, Any]] = []

    def folders(self) -> dict[Path, str]:
        return {r.source_dir: r.name for r in self.kernel.plugins.records.values() if r.source_dir and r.module}

    def start(self) -> None:
        self.kernel.tasks.spawn("core", self._watch(), name="core:reloader")

    async def stop(self) -> None:
        self._stop.set()

    async def _watch(self) -> None:
        from watchfiles import awatch

        folders = self.folders()
        if not folders:
            return
        log.info("watching %d plugin folders for changes", len(folders))
        async for changes in awatch(*folders, stop_event=self._stop, debounce=150, step=50):
            touched = set()
            for _change, path in changes:
                if not path.endswith(WATCHED_SUFFIXES):
                    continue
                for folder, name in folders.items():
                    if Path(path).is_relative_to(folder):
                        touched.add(name)
            for name in sorted(touched):
                await self.reload(name)

    async def reload(self, name: str) -> bool:
        """Reload plugin ``name``; True when the new version is live."""
        async with self._lock:
            started = time.perf_counter()
            ok, error = await self._reload(name)
            record = self.kernel.plugins.records[name]
            record.reload_error = error
            if ok:
                record.reloads += 1
            self.history.append({"plugin": name, "ok": ok, "error": error, "at": time.time()})
            del self.history[:-50]
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
        old_module = record.module
        try:
            new_module = reimport(record)
        except Exception as exc:  # syntax error, failing import: nothing was touched
            return False, f"import failed: {type(exc).__name__}: {exc}"
        await kernel.stop_plugin(name)
        try:
            app = await self._activate(name, new_module)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            await kernel.stop_plugin(name)
            try:
                await self._activate(name, old_module, swap=True)
            except Exception:  # the old version cannot come back either: report it as failed
                log.exception("could not restore plugin %s", name)
                record.error = f"reload failed and restore failed: {error}"
            return False, error
        old_app = self.switch.swap(app)
        kernel.tasks.spawn("core", _retire(old_app), name="core:retire-app")
        return True, None

    async def _activate(self, name: str, module: Any, swap: bool = True) -> Any:
        """Register ``module`` as plugin ``name``, gather what it contributes, start it, build an app."""
        kernel = self.kernel
        host = kernel.plugins
        record = host.records[name]
        if host.pm.has_plugin(name):
            host.pm.unregister(name=name)
        record.module = module
        record.error = None
        specs = getattr(module, "hookspecs", None)
        if specs is not None:
            host.pm.add_hookspecs(specs)
        host.pm.register(module, name=name)
        host.pm.check_pending()
        record.hooks = [h.name for h in host.pm.get_hookcallers(module) or []]
        kernel.config.remove_sections_of(name)
        kernel.collect_config(plugin=name)
        kernel.routes.remove_plugin(name)
        kernel.collect_routes(plugin=name)
        for key in [k for k, (owner, _) in kernel.security_checks.items() if owner == name]:
            del kernel.security_checks[key]
        kernel.collect_security_checks(plugin=name)
        kernel.plugins.call("register_migrations", plugin=name, register=_migrations_register(kernel))
        await kernel.db.migrate([n for n in kernel.db.migrations if n == name or n.startswith(name)])
        if record.error:
            raise RuntimeError(record.error)
        app = build_app(kernel)
        await app.startup()
        if not await kernel.start_plugin(name):
            raise RuntimeError(record.error or "startup failed")
        return app


def _migrations_register(kernel: Kernel) -> Any:
    from librefang.plugins import PluginBound

    return PluginBound(kernel._add_migrations)


async def _retire(app: Any, grace: float = 30.0) -> None:
    """Let requests on the old app finish before its shutdown runs."""
    await asyncio.sleep(grace)
    try:
        await app.shutdown()
    except Exception:  # noqa: BLE001
        log.debug("old app shutdown failed", exc_info=True)

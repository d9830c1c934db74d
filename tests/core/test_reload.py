"""Hot reload (ARCHITECTURE §3).

In-process tests drive :class:`librefang.reload.Reloader` directly (no file watcher) to cover each
way a new version can fail; the end-to-end test runs ``python -m librefang start --foreground --dev``
as a real process and edits a plugin's source file under it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from librefang.app import build_app
from librefang.reload import Reloader
from librefang.server import AppSwitch
from librefang.testing import free_port, make_client

ALPHA_PLUGIN = '''
from librefang import hookimpl

from . import routes


@hookimpl
def register_routes(register):
    register(routes.router)


@hookimpl
def startup(kernel):
    kernel.state.setdefault("alpha_startups", []).append(routes.VERSION)
    kernel.state.setdefault("alpha_tasks", []).append(kernel.tasks.spawn("alpha", routes.idle()))


@hookimpl
def shutdown(kernel):
    kernel.state.setdefault("alpha_shutdowns", []).append(routes.VERSION)
'''

ALPHA_ROUTES = '''
import asyncio
import os
import time

from librefang import current_kernel
from librefang.routing import Router

VERSION = 1
router = Router("alpha")


@router.get("/api/alpha", cost=1)
async def alpha():
    return {"version": VERSION}


@router.get("/api/alpha/slow", cost=1)
async def slow():
    """Stays open until a reload of this plugin has happened, then answers with its own version."""
    kernel = current_kernel()
    marker = os.environ.get("ALPHA_MARKER")
    if marker:
        with open(marker, "w") as fh:
            fh.write("in flight")
    deadline = time.monotonic() + 15
    while kernel.plugins.records["alpha"].reloads < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return {"version": VERSION, "reloads": kernel.plugins.records["alpha"].reloads}


async def idle():
    await asyncio.sleep(3600)
'''

BETA_PLUGIN = '''
from librefang import hookimpl
from librefang.routing import Router

COUNT = {"n": 0}
STARTS = []
router = Router("beta")


@router.post("/api/beta/count", cost=1)
async def bump():
    COUNT["n"] += 1
    return {"count": COUNT["n"]}


@router.get("/api/beta/count", cost=1)
async def read():
    return {"count": COUNT["n"], "startups": len(STARTS)}


@hookimpl
def register_routes(register):
    register(router)


@hookimpl
def startup(kernel):
    STARTS.append(1)
'''


def add_alpha_beta(plugin_site, monkeypatch, alpha_routes: str = ALPHA_ROUTES) -> Path:
    alpha_dir = plugin_site.add("alpha", {"plugin.py": ALPHA_PLUGIN, "routes.py": alpha_routes})
    plugin_site.add("beta", {"plugin.py": BETA_PLUGIN})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "alpha,beta")
    return alpha_dir


def edit(path: Path, old: str, new: str) -> None:
    """Change a source file the way an editor saves it (write a temp file, rename over)."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.replace(old, new))
    os.replace(tmp, path)


async def dev_setup(make_kernel):
    kernel = await make_kernel()
    app = build_app(kernel)
    await app.startup()
    switch = AppSwitch(app)
    return kernel, switch, Reloader(kernel, switch)


async def get_json(app, path: str) -> dict:
    response = await make_client(app).get(path)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def test_reload_swaps_in_new_version_and_leaves_other_plugins_alone(plugin_site, make_kernel, monkeypatch):
    alpha_dir = add_alpha_beta(plugin_site, monkeypatch)
    kernel, switch, reloader = await dev_setup(make_kernel)
    old_app = switch.app
    assert await get_json(old_app, "/api/alpha") == {"version": 1}
    for _ in range(2):
        await make_client(old_app).post("/api/beta/count")
    beta_module = kernel.plugins.records["beta"].module
    (first_task,) = kernel.state["alpha_tasks"]

    edit(alpha_dir / "routes.py", "VERSION = 1", "VERSION = 2")
    assert reloader.plugins_for({alpha_dir / "routes.py"}) == ["alpha"]
    assert await reloader.reload("alpha") is True

    assert switch.app is not old_app
    assert await get_json(switch.app, "/api/alpha") == {"version": 2}
    assert await get_json(switch.app, "/api/v1/alpha") == {"version": 2}
    # the other plugin was not restarted and kept its in-memory state
    assert await get_json(switch.app, "/api/beta/count") == {"count": 2, "startups": 1}
    assert kernel.plugins.records["beta"].module is beta_module
    # old alpha was shut down before new alpha started; its owned task was cancelled
    assert kernel.state["alpha_startups"] == [1, 2]
    assert kernel.state["alpha_shutdowns"] == [1]
    assert first_task.cancelled() and kernel.tasks.count("alpha") == 1
    status = await get_json(switch.app, "/api/status")
    row = next(r for r in status["plugins"] if r["name"] == "alpha")
    assert row["reloads"] == 1 and row["reload_error"] is None and row["loaded"]
    assert kernel.start_order == ["beta", "alpha"]


BROKEN_VERSIONS = {  # case: (file, text, replacement, pattern of the reported error)
    "syntax error": ("routes.py", "VERSION = 1", "VERSION = = 2", r"^import failed: SyntaxError"),
    "import error": ("routes.py", "VERSION = 1", "import no_such_module_xyz\nVERSION = 2",
                     r"^import failed: ModuleNotFoundError"),
    "unknown hook": ("plugin.py", "from . import routes\n",
                     "from . import routes\n\n\n@hookimpl\ndef startupp(kernel):\n    pass\n",
                     r"^registration failed: .*startupp"),
    "duplicate route": ("routes.py", '@router.get("/api/alpha/slow"', '@router.post("/api/beta/count"',
                        r"duplicate route POST /api/beta/count: plugin 'alpha'.*'beta'"),
    "startup raises": ("routes.py", "async def idle():",
                       "def idle():\n    raise RuntimeError('new version cannot start')\n\n\nasync def old_idle():",
                       r"RuntimeError: new version cannot start"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_VERSIONS))
async def test_failed_reload_keeps_previous_version_serving(case, plugin_site, make_kernel, monkeypatch, caplog):
    filename, old, new, error_pattern = BROKEN_VERSIONS[case]
    alpha_dir = add_alpha_beta(plugin_site, monkeypatch)
    alpha_file = alpha_dir / filename
    kernel, switch, reloader = await dev_setup(make_kernel)
    app = switch.app
    package = kernel.plugins.records["alpha"].module.__name__.split(".")[0]

    edit(alpha_file, old, new)
    assert await reloader.reload("alpha") is False

    record = kernel.plugins.records["alpha"]
    assert record.reload_error and re.search(error_pattern, record.reload_error), record.reload_error
    assert record.ok and record.error is None and record.reloads == 0
    assert switch.app is app  # never swapped
    assert await get_json(app, "/api/alpha") == {"version": 1}
    assert kernel.routes.of_plugin("alpha") == ["GET /api/alpha", "GET /api/alpha/slow"]
    assert sys.modules[package + ".routes"].VERSION == 1  # the old modules are back in place
    assert kernel.plugins.pm.has_plugin("alpha") and kernel.plugins.pm.has_plugin("beta")
    assert "reload of plugin alpha failed, previous version kept" in caplog.text
    status = await get_json(app, "/api/status")
    assert next(r for r in status["plugins"] if r["name"] == "alpha")["reload_error"] == record.reload_error
    if case == "startup raises":  # old stopped, new failed in startup, old started again
        assert kernel.state["alpha_shutdowns"] == [1] and len(kernel.state["alpha_startups"]) == 3
        assert kernel.tasks.count("alpha") == 1 and kernel.start_order == ["beta", "alpha"]
    else:  # the old version was never stopped
        assert "alpha_shutdowns" not in kernel.state

    # fixing the file brings the next version in, and clears the error
    edit(alpha_file, new, old)
    edit(alpha_dir / "routes.py", "VERSION = 1", "VERSION = 3")
    assert await reloader.reload("alpha") is True
    assert await get_json(switch.app, "/api/alpha") == {"version": 3}
    assert kernel.plugins.records["alpha"].reload_error is None


async def test_reload_brings_in_a_plugin_that_failed_to_import_at_start(plugin_site, make_kernel, monkeypatch):
    alpha_dir = add_alpha_beta(plugin_site, monkeypatch, ALPHA_ROUTES.replace("VERSION = 1", "VERSION = (1"))
    kernel, switch, reloader = await dev_setup(make_kernel)
    record = kernel.plugins.records["alpha"]
    assert not record.ok and record.error.startswith("import failed: SyntaxError")
    assert record.source_dir == alpha_dir.resolve()  # watched although it never imported
    assert alpha_dir.resolve() in reloader.folders()
    assert (await make_client(switch.app).get("/api/alpha")).status_code == 404

    edit(alpha_dir / "routes.py", "VERSION = (1", "VERSION = 1")
    assert await reloader.reload("alpha") is True
    assert record.ok and record.error is None
    assert await get_json(switch.app, "/api/alpha") == {"version": 1}
    assert kernel.start_order == ["beta", "alpha"]


# -- end to end: a real daemon process, a real file watcher -------------------------------------------

def _wait_for(predicate, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _get(url: str) -> dict:
    return httpx.get(url, timeout=20).json()


def _alpha_row(base: str) -> dict:
    return next(r for r in _get(base + "/api/status")["plugins"] if r["name"] == "alpha")


def test_dev_daemon_hot_reloads_a_plugin_end_to_end(plugin_site, librefang_home, monkeypatch, tmp_path):
    alpha_dir = add_alpha_beta(plugin_site, monkeypatch)
    marker = tmp_path / "slow-request-marker"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_site.root),
                                                                    os.environ.get("PYTHONPATH")])),
               ALPHA_MARKER=str(marker))
    log_path = tmp_path / "daemon.out"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "librefang", "start", "--foreground", "--dev", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: "hot reload: watching" in log_path.read_text() or proc.poll() is not None, 30,
                  "the daemon to start watching")
        assert proc.poll() is None, log_path.read_text()
        pid = json.loads((librefang_home / "daemon.json").read_text())["pid"]
        assert pid == proc.pid
        assert _get(base + "/api/alpha") == {"version": 1}
        for _ in range(3):
            httpx.post(base + "/api/beta/count", timeout=5)

        # a request that is in flight while the plugin is reloaded
        slow: dict = {}
        thread = threading.Thread(target=lambda: slow.update(_get(base + "/api/alpha/slow")))
        thread.start()
        _wait_for(marker.exists, 5, "the slow request to be in flight")

        edited = time.monotonic()
        edit(alpha_dir / "routes.py", "VERSION = 1", "VERSION = 2")
        _wait_for(lambda: _get(base + "/api/alpha") == {"version": 2}, 5, "the new version to be served")
        took = time.monotonic() - edited
        print(f"hot reload: edit served after {took:.2f} s")
        assert took < 2.0, f"the change took {took:.2f} s to go live"

        thread.join(10)
        assert slow == {"version": 1, "reloads": 1}  # finished on the old app, after the swap
        assert _get(base + "/api/beta/count") == {"count": 3, "startups": 1}
        assert _alpha_row(base)["reloads"] == 1

        # a broken edit: the previous version keeps serving, the error is reported
        edit(alpha_dir / "routes.py", "VERSION = 2", "VERSION = = 3")
        row = _wait_for(lambda: (r := _alpha_row(base))["reload_error"] and r, 5, "the reload error")
        assert row["reload_error"].startswith("import failed: SyntaxError") and row["loaded"]
        assert _get(base + "/api/alpha") == {"version": 2}
        _wait_for(lambda: "reload of plugin alpha failed, previous version kept" in log_path.read_text(), 5,
                  "the failure in the log")

        edit(alpha_dir / "routes.py", "VERSION = = 3", "VERSION = 3")
        _wait_for(lambda: _get(base + "/api/alpha") == {"version": 3}, 5, "the fixed version")
        assert _alpha_row(base)["reload_error"] is None
        assert _get(base + "/api/beta/count") == {"count": 3, "startups": 1}
        assert proc.poll() is None and json.loads((librefang_home / "daemon.json").read_text())["pid"] == pid

        assert httpx.post(base + "/api/shutdown", timeout=5).status_code == 202
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)

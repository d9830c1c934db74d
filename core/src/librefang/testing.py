"""Test support shipped with the core (a ``pytest11`` plugin, so fixtures are available everywhere).

Fixtures: ``librefang_home`` (a temp home), ``make_kernel`` (build and start kernels, stopped after
the test), ``kernel`` and ``client`` (every installed plugin, in-process), ``live_server`` (a real
Hypercorn server on a free 127.0.0.1 port, in a thread), ``plugin_site`` (write a plugin package
that ``importlib.metadata`` discovers through its entry point, as if pip-installed). In-process test
plugins are plain modules or objects with ``@librefang.hookimpl`` functions passed as
``plugins={"name": obj}``.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from quart.testing import QuartClient

LOOPBACK = ("127.0.0.1", 50000)


class LoopbackClient(QuartClient):
    """Quart's test client, but requests come from a loopback peer unless ``scope_base`` says otherwise."""

    async def open(self, path: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        scope = dict(kwargs.pop("scope_base", None) or {})
        scope.setdefault("client", LOOPBACK)
        return await super().open(path, *args, scope_base=scope, **kwargs)

    def websocket(self, path: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        scope = dict(kwargs.pop("scope_base", None) or {})
        scope.setdefault("client", LOOPBACK)
        return super().websocket(path, *args, scope_base=scope, **kwargs)


def make_client(app: Any) -> LoopbackClient:
    return LoopbackClient(app)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


@pytest.fixture
def librefang_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home folder; ``LIBREFANG_HOME`` points at it and no API key leaks in from the env."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LIBREFANG_HOME", str(home))
    monkeypatch.setenv("LIBREFANG_VAULT_KEY", "00" * 32)
    for name in ("LIBREFANG_API_KEY", "LIBREFANG_ALLOW_NO_AUTH", "LIBREFANG_LOAD_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
async def make_kernel(librefang_home: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await make_kernel(plugins={...}, load_entry_points=True, config="toml", home=path)``."""
    from librefang.kernel import create_kernel

    kernels = []

    async def factory(
        *, plugins: dict[str, Any] | None = None, load_entry_points: bool = True,
        config: str | None = None, home: Path | None = None,
    ) -> Any:
        target = home or librefang_home
        if config is not None:
            write_config(target, config)
        kernel = create_kernel(target, plugins=plugins, load_entry_points=load_entry_points)
        await kernel.start()
        kernels.append(kernel)
        return kernel

    yield factory
    for kernel in reversed(kernels):
        await kernel.stop()


@pytest.fixture
async def kernel(make_kernel: Callable[..., Any]) -> Any:
    """A started kernel with every installed plugin."""
    return await make_kernel()


@pytest.fixture
def app(kernel: Any) -> Any:
    from librefang.app import build_app

    return build_app(kernel)


@pytest.fixture
def client(app: Any) -> LoopbackClient:
    """An in-process HTTP client whose requests come from 127.0.0.1."""
    return make_client(app)


@dataclass
class LiveServer:
    url: str
    kernel: Any
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop

    def stop(self, timeout: float = 15) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.kernel.shutdown_requested.set)
            self.thread.join(timeout)


def start_live_server(home: Path, *, plugins: dict[str, Any] | None = None, dev: bool = False,
                      load_entry_points: bool = True) -> LiveServer:
    """Run the daemon (kernel + Hypercorn) in a thread on a free port; returns once it serves."""
    from librefang.kernel import create_kernel
    from librefang.server import loop_factory, serve

    port = free_port()
    kernel = create_kernel(home, plugins=plugins, load_entry_points=load_entry_points)
    loop = loop_factory(kernel.config.core.event_loop)()  # the loop the daemon itself would run on
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        started = asyncio.Event()

        async def main() -> None:
            task = asyncio.ensure_future(serve(kernel, "127.0.0.1", port, dev=dev, ready=started))
            waiter = asyncio.ensure_future(started.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            ready.set()
            await task

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="librefang-live-server", daemon=True)
    thread.start()
    ready.wait(30)
    if failure:
        raise failure[0]
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/api/health")
    return LiveServer(url=url, kernel=kernel, thread=thread, loop=loop)


def _wait_http(url: str, timeout: float = 20) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards) on the server that
    ``LIBREFANG_TEST_POSTGRES_URL`` points at (an admin URL such as
    ``postgresql://postgres@127.0.0.1:54329/postgres``; ``.ci/run`` starts one). The test is
    skipped when the variable is unset or asyncpg is not installed."""
    import os

    admin_url = os.environ.get("LIBREFANG_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("set LIBREFANG_TEST_POSTGRES_URL to run against PostgreSQL")
    asyncpg = pytest.importorskip("asyncpg")
    name = f"lf_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield admin_url.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
def live_server(librefang_home: Path) -> Iterator[LiveServer]:
    """A real server on a free loopback port with every installed plugin."""
    server = start_live_server(librefang_home)
    yield server
    server.stop()


def write_plugin_package(
    root: Path,
    *,
    entry_name: str,
    package: str,
    files: dict[str, str],
    module: str = "plugin",
    distribution: str | None = None,
    version: str = "0.1.0",
    requires: tuple[str, ...] = (),
) -> Path:
    """Write plugin ``package`` into ``root`` the way an installer would: the package folder with
    ``files`` (relative path -> source) and a ``*.dist-info`` whose ``entry_points.txt`` puts
    ``entry_name = package.module`` in the ``librefang.plugins`` group. With ``root`` on
    ``sys.path`` (``monkeypatch.syspath_prepend`` or ``PYTHONPATH``), the daemon discovers it.
    Returns the package folder (the folder ``--dev`` watches)."""
    import textwrap

    dist = distribution or f"librefang-{entry_name}"
    pkg_dir = root / package
    pkg_dir.mkdir(parents=True, exist_ok=True)
    files = {"__init__.py": "", **files}
    for relative, source in files.items():
        target = pkg_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    metadata = ["Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {req}" for req in requires]
    (info / "METADATA").write_text("\n".join(metadata) + "\n")
    (info / "entry_points.txt").write_text(f"[librefang.plugins]\n{entry_name} = {package}.{module}\n")
    (info / "RECORD").write_text("")
    importlib.invalidate_caches()
    return pkg_dir


class PluginSite:
    """A temp folder on ``sys.path`` holding plugin packages written by :meth:`add`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packages: list[str] = []

    def add(self, entry_name: str, files: dict[str, str], **kwargs: Any) -> Path:
        """Write a plugin (see :func:`write_plugin_package`); ``package`` defaults to a unique name."""
        package = kwargs.pop("package", None) or f"lftest_{entry_name}_{uuid.uuid4().hex[:8]}"
        self.packages.append(package)
        return write_plugin_package(self.root, entry_name=entry_name, package=package, files=files, **kwargs)

    def forget_modules(self) -> None:
        """Drop the written packages from ``sys.modules`` (so the next test imports its own)."""
        for package in self.packages:
            for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[name]


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginSite]:
    """Write real plugin packages that are discovered through the ``librefang.plugins`` entry point.

    ``plugin_site.add("hello", {"plugin.py": source})`` then select it with
    ``monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "hello")`` (other installed plugins stay out)."""
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    site = PluginSite(root)
    yield site
    site.forget_modules()

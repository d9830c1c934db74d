"""The plugin host: entry-point discovery, selection, failure isolation, routes, config, CLI commands,
lifecycle symmetry, hook tracing and unknown-hook detection.

Plugins here are real packages written into a temp folder with a ``*.dist-info`` (the
``plugin_site`` fixture), so ``importlib.metadata`` finds them through the ``librefang.plugins``
entry-point group exactly as it finds a pip-installed plugin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from librefang import hookimpl, hookspec
from librefang.app import build_app
from librefang.errors import ConfigError, PluginError
from librefang.plugins import PluginBound
from librefang.routing import Router
from librefang.testing import make_client, start_live_server

HELLO_PLUGIN = '''
import click
from pydantic import BaseModel, Field

from librefang import current_kernel, hookimpl
from librefang.config import Section
from librefang.routing import Router


class HelloConfig(Section):
    greeting: str = "hello"
    times: int = Field(1, ge=1, le=10)


class HelloOut(BaseModel):
    text: str


class HelloQuery(BaseModel):
    name: str = Field("world", max_length=20)


router = Router("hello")


@router.get("/api/hello", cost=1, query=HelloQuery, response=HelloOut)
async def hello(query: HelloQuery) -> HelloOut:
    """Greets, as configured in [hello]."""
    config = current_kernel().config.section("hello")
    return HelloOut(text=" ".join([config.greeting] * config.times) + ", " + query.name)


@click.command("hello-say")
@click.argument("name")
def say(name):
    """Say hello from the hello plugin."""
    click.echo(f"hello plugin says hi to {name}")


@hookimpl
def register_config(register):
    register("hello", HelloConfig)


@hookimpl
def register_routes(register):
    register(router)


@hookimpl
def register_commands(cli):
    cli.add_command(say)
'''


def spec_module(*functions: object) -> types.ModuleType:
    """A hookspecs module, as a plugin that offers hooks exposes it (its ``hookspecs`` attribute)."""
    module = types.ModuleType("offered_hookspecs")
    for function in functions:
        setattr(module, function.__name__, hookspec(function))
    return module


def _route_plugin(name: str, path: str, extra: str = "") -> str:
    return f'''
from librefang import hookimpl
from librefang.routing import Router

router = Router("{name}")


@router.get("{path}", cost=1)
async def answer():
    return {{"plugin": "{name}"}}


@hookimpl
def register_routes(register):
    register(router)
{extra}
'''


async def test_entry_point_plugin_adds_route_config_section_and_status(plugin_site, make_kernel, monkeypatch):
    plugin_site.add("hello", {"plugin.py": HELLO_PLUGIN})
    plugin_site.add("other", {"plugin.py": _route_plugin("other", "/api/other")})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "hello")
    kernel = await make_kernel(config='[hello]\ngreeting = "hi"\ntimes = 2\nkept = "unknown keys stay"\n')
    client = make_client(build_app(kernel))

    response = await client.get("/api/hello?name=bob")
    assert response.status_code == 200
    assert await response.get_json() == {"text": "hi hi, bob"}
    assert (await (await client.get("/api/v1/hello")).get_json()) == {"text": "hi hi, world"}
    bad = await client.get("/api/hello?name=" + "x" * 50)
    assert bad.status_code == 400 and (await bad.get_json())["code"] == "invalid_query"
    # the allow-list kept "other" out
    assert (await client.get("/api/other")).status_code == 404

    status = await (await client.get("/api/status")).get_json()
    (row,) = status["plugins"]
    assert row["name"] == "hello" and row["loaded"] and row["error"] is None
    assert row["distribution"] == "librefang-hello" and row["version"] == "0.1.0"
    assert row["routes"] == ["GET /api/hello"]
    assert {"register_config", "register_routes", "register_commands"} <= set(row["hooks"])

    schema = await (await client.get("/api/config/schema")).get_json()
    assert schema["properties"]["hello"]["x-plugin"] == "hello"
    assert "times" in schema["properties"]["hello"]["properties"]
    assert kernel.config.section("hello").kept == "unknown keys stay"


async def test_bad_plugin_config_value_fails_start_naming_the_key(plugin_site, make_kernel, monkeypatch):
    plugin_site.add("hello", {"plugin.py": HELLO_PLUGIN})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "hello")
    with pytest.raises(ConfigError, match=r"hello\.times"):
        await make_kernel(config="[hello]\ntimes = 0\n")


def test_plugin_cli_command_runs(plugin_site, librefang_home, monkeypatch):
    from librefang import cli

    plugin_site.add("hello", {"plugin.py": HELLO_PLUGIN})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "hello")
    # `main` is a module-level click group that caches the plugin commands it loaded: give this
    # test its own view so commands from other tests (or this one) do not leak.
    monkeypatch.setattr(cli.main, "commands", dict(cli.main.commands))
    monkeypatch.setattr(cli.main, "_plugins_loaded", False, raising=False)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["hello-say", "bob"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hello plugin says hi to bob"
    listing = runner.invoke(cli.main, ["--help"])
    assert "hello-say" in listing.output


def test_cli_plugins_lists_installed_plugins_and_import_errors(plugin_site, librefang_home, monkeypatch):
    from librefang import cli

    plugin_site.add("hello", {"plugin.py": HELLO_PLUGIN})
    plugin_site.add("broken", {"plugin.py": "raise RuntimeError('boom at import')\n"})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "hello,broken")
    result = CliRunner().invoke(cli.main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["hello"]["loaded"] is True
    assert rows["broken"]["loaded"] is False
    assert "RuntimeError: boom at import" in rows["broken"]["error"]
    text = CliRunner().invoke(cli.main, ["plugins"])
    assert "FAILED" in text.output and "boom at import" in text.output


async def test_selection_allow_list_empty_and_disabled(plugin_site, make_kernel, monkeypatch, tmp_path):
    plugin_site.add("one", {"plugin.py": _route_plugin("one", "/api/one")})
    plugin_site.add("two", {"plugin.py": _route_plugin("two", "/api/two")})

    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    kernel = await make_kernel(home=tmp_path / "h1")
    assert kernel.plugins.records == {}

    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", " two , ")
    kernel = await make_kernel(home=tmp_path / "h2")
    assert sorted(kernel.plugins.records) == ["two"]

    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "one,two")
    kernel = await make_kernel(home=tmp_path / "h3", config='[plugins]\ndisabled = ["one"]\n')
    assert sorted(kernel.plugins.records) == ["two"]
    assert kernel.routes.of_plugin("two") == ["GET /api/two"]
    assert kernel.routes.of_plugin("one") == []


FAILING_PLUGINS = {
    "badimport": {"plugin.py": "import librefang\nraise RuntimeError('boom at import')\n"},
    "badroutes": {"plugin.py": _route_plugin("badroutes", "/api/badroutes").replace(
        "    register(router)", "    register(router)\n    raise ValueError('boom in register_routes')")},
    "badstartup": {"plugin.py": _route_plugin("badstartup", "/api/badstartup", extra='''
import asyncio

TASKS = []


@hookimpl
def startup(kernel):
    TASKS.append(kernel.tasks.spawn("badstartup", asyncio.sleep(3600)))
    raise RuntimeError("boom in startup")
''')},
    "badhook": {"plugin.py": "from librefang import hookimpl\n\n\n@hookimpl\ndef startupp(kernel):\n    pass\n"},
    "good": {"plugin.py": _route_plugin("good", "/api/good")},
}


async def test_failing_plugins_are_reported_and_daemon_starts_without_them(plugin_site, librefang_home, monkeypatch):
    from librefang import cli

    for name, files in FAILING_PLUGINS.items():
        plugin_site.add(name, files)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", ",".join(FAILING_PLUGINS))
    server = await asyncio.to_thread(start_live_server, librefang_home)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/api/good")).json() == {"plugin": "good"}
            for path in ("/api/badroutes", "/api/badstartup"):  # their routes are not served
                response = await http.get(path)
                assert response.status_code == 404 and response.json()["code"] == "not_found"
            status = (await http.get("/api/status")).json()
        rows = {row["name"]: row for row in status["plugins"]}
        assert rows["good"]["loaded"] and rows["good"]["error"] is None
        assert "import failed: RuntimeError: boom at import" in rows["badimport"]["error"]
        assert "register_routes failed: ValueError: boom in register_routes" in rows["badroutes"]["error"]
        assert "startup failed: RuntimeError: boom in startup" in rows["badstartup"]["error"]
        assert "unknown hook" in rows["badhook"]["error"] and "startupp" in rows["badhook"]["error"]
        assert all(not rows[name]["loaded"] and rows[name]["routes"] == [] for name in FAILING_PLUGINS if name != "good")
        # the task the failing startup spawned was cancelled
        (task,) = next(m for n, m in sys.modules.items()
                       if n.startswith("lftest_badstartup") and n.endswith(".plugin")).TASKS
        assert task.cancelled()
        assert server.kernel.tasks.count("badstartup") == 0

        # `librefang plugins` asks the running daemon, so it reports the startup failure too
        (librefang_home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "url": server.url}))
        result = await asyncio.to_thread(CliRunner().invoke, cli.main, ["plugins"])
        assert result.exit_code == 0, result.output
        assert "boom in startup" in result.output and "boom at import" in result.output
    finally:
        await asyncio.to_thread(server.stop)


async def test_duplicate_route_across_plugins_fails_loudly_naming_both(make_kernel):
    def routes_plugin(router_name: str, path: str) -> object:
        router = Router(router_name)

        @router.get(path, cost=1)
        async def answer() -> dict:
            return {}

        return types.SimpleNamespace(register_routes=hookimpl(lambda register: register(router)))

    with pytest.raises(PluginError, match=r"GET /api/dup.*'second'.*'first'"):
        await make_kernel(load_entry_points=False, plugins={
            "first": routes_plugin("first", "/api/dup"), "second": routes_plugin("second", "/api/dup")})
    # /api/v1/health is /api/health, which the core owns
    with pytest.raises(PluginError, match=r"/api/v1/health.*'core'"):
        await make_kernel(load_entry_points=False, plugins={"sneaky": routes_plugin("sneaky", "/api/v1/health")})
    # two routers with one name would share Quart endpoint names (and their auth metadata)
    with pytest.raises(PluginError, match=r"router named 'same'.*'a'"):
        await make_kernel(load_entry_points=False, plugins={
            "a": routes_plugin("same", "/api/a"), "b": routes_plugin("same", "/api/b")})


async def test_startup_and_shutdown_are_symmetric_and_owned_tasks_cancelled(make_kernel):
    events: list[str] = []
    tasks: dict[str, asyncio.Task] = {}

    def lifecycle_plugin(name: str) -> object:
        async def startup(kernel):
            events.append(f"start {name}")
            tasks[name] = kernel.tasks.spawn(name, asyncio.sleep(3600))

        def shutdown(kernel):
            events.append(f"stop {name}")
            assert not tasks[name].done()  # the host cancels owned tasks after shutdown ran

        def status_info(kernel):
            if name == "b":
                raise RuntimeError("status_info broke while running")
            return {f"{name}_ok": True}

        return types.SimpleNamespace(startup=hookimpl(startup), shutdown=hookimpl(shutdown),
                                     status_info=hookimpl(status_info))

    kernel = await make_kernel(load_entry_points=False,
                               plugins={"a": lifecycle_plugin("a"), "b": lifecycle_plugin("b")})
    assert events == ["start a", "start b"]
    assert kernel.tasks.count("a") == kernel.tasks.count("b") == 1

    # a hook failing while the daemon runs is logged; the plugin keeps running (and is shut down)
    response = await make_client(build_app(kernel)).get("/api/status")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["a_ok"] is True
    assert kernel.plugins.records["b"].ok

    await kernel.stop()
    assert events == ["start a", "start b", "stop b", "stop a"]
    assert tasks["a"].cancelled() and tasks["b"].cancelled()
    assert kernel.tasks.count() == 0


async def test_hook_tracing_logs_each_call(make_kernel, monkeypatch, caplog):
    def register_widgets(register):
        """Offered by the test's `offers` plugin."""

    offers = types.SimpleNamespace(hookspecs=spec_module(register_widgets))
    uses = types.SimpleNamespace(startup=hookimpl(lambda kernel: None),
                                 register_widgets=hookimpl(lambda register: register("w1")))

    monkeypatch.setenv("LIBREFANG_TRACE_PLUGINS", "1")
    caplog.set_level(logging.INFO, logger="librefang.plugins.trace")
    kernel = await make_kernel(load_entry_points=False, plugins={"offers": offers, "uses": uses})
    messages = [r.getMessage() for r in caplog.records if r.name == "librefang.plugins.trace"]
    assert any(m.startswith("hook startup plugin=uses ") and m.endswith("ms") for m in messages)

    widgets: list[str] = []
    kernel.plugins.pm.hook.register_widgets(register=widgets.append)  # a plugin-offered hook via pm.hook
    assert widgets == ["w1"]
    messages = [r.getMessage() for r in caplog.records if r.name == "librefang.plugins.trace"]
    assert "hook register_widgets via pm.hook plugins=['uses']" in messages

    caplog.clear()
    monkeypatch.delenv("LIBREFANG_TRACE_PLUGINS")
    await make_kernel(load_entry_points=False, plugins={"uses": types.SimpleNamespace(
        startup=hookimpl(lambda kernel: None))}, home=kernel.home.parent / "untraced")
    assert not [r for r in caplog.records if r.name == "librefang.plugins.trace"]


async def test_check_pending_catches_unknown_hooks(make_kernel):
    typo = types.SimpleNamespace(startupp=hookimpl(lambda kernel: None))
    fine = types.SimpleNamespace(startup=hookimpl(lambda kernel: None))
    kernel = await make_kernel(load_entry_points=False, plugins={"typo": typo, "fine": fine})
    record = kernel.plugins.records["typo"]
    assert not record.ok and "unknown hook" in record.error and "startupp" in record.error
    assert kernel.plugins.records["fine"].ok
    kernel.plugins.pm.check_pending()  # nothing unknown is left registered
    assert not kernel.plugins.pm.has_plugin("typo")


async def test_plugin_offered_hookspecs_are_added_before_hooks_run(make_kernel):
    def register_gadgets(register):
        """Offered by the `provider` plugin."""

    gadgets: list[tuple[str, str]] = []

    def startup(kernel):
        kernel.plugins.call("register_gadgets", register=PluginBound(lambda owner, name: gadgets.append((owner, name))))

    provider = types.SimpleNamespace(hookspecs=spec_module(register_gadgets), startup=hookimpl(startup))
    # "consumer" sorts before "provider" and implements a hook only the provider declares
    consumer = types.SimpleNamespace(register_gadgets=hookimpl(lambda register: register("g1")))
    kernel = await make_kernel(load_entry_points=False, plugins={"provider": provider, "consumer": consumer})
    assert kernel.plugins.records["consumer"].ok
    assert gadgets == [("consumer", "g1")]


async def test_startup_ordered_by_distribution_dependencies(plugin_site, make_kernel, monkeypatch):
    log_plugin = '''
from librefang import hookimpl


@hookimpl
def startup(kernel):
    kernel.state.setdefault("order", []).append("{name}")
'''
    # "aaa" depends on "zzz", so zzz starts first although it sorts last
    plugin_site.add("aaa", {"plugin.py": log_plugin.format(name="aaa")}, requires=("librefang-zzz>=0.1",))
    plugin_site.add("zzz", {"plugin.py": log_plugin.format(name="zzz")})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "aaa,zzz")
    kernel = await make_kernel()
    assert kernel.state["order"] == ["zzz", "aaa"]


TEMPLATE = Path(__file__).resolve().parents[2] / "docs" / "plugin-template"


def install_template(plugin_site) -> str:
    """Install docs/plugin-template into the temp site the way pip would: its package plus a
    dist-info carrying the entry point declared in its pyproject.toml."""
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"]
    ((entry_name, target),) = project["entry-points"]["librefang.plugins"].items()
    package, module = target.split(".", 1)
    source = TEMPLATE / "src" / package
    files = {str(p.relative_to(source)): p.read_text() for p in source.rglob("*.py")}
    plugin_site.add(entry_name, files, package=package, module=module, distribution=project["name"],
                    version=project["version"])
    return entry_name


async def test_docs_plugin_template_installs_and_works(plugin_site, make_kernel, monkeypatch):
    from librefang import cli

    name = install_template(plugin_site)
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", name)
    kernel = await make_kernel(config='[example]\ngreeting = "Hey"\n')
    record = kernel.plugins.records[name]
    assert record.ok and record.distribution == "librefang-example", record.error
    assert set(record.hooks) == {"register_config", "register_routes", "register_commands", "startup",
                                 "shutdown", "status_info"}
    client = make_client(build_app(kernel))
    assert await (await client.get("/api/example/greeting?name=Ada")).get_json() == {"text": "Hey, Ada!"}

    monkeypatch.setattr(cli.main, "commands", dict(cli.main.commands))
    monkeypatch.setattr(cli.main, "_plugins_loaded", False, raising=False)
    result = await asyncio.to_thread(CliRunner().invoke, cli.main, ["example-greet", "Bo"])
    assert result.output == "Hey, Bo!\n", result.output

    # the template's own tests pass as shipped (run as a user of the copied template would)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_site.root),
                                                                    os.environ.get("PYTHONPATH")])))
    run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEMPLATE / "tests")],
        env=env, capture_output=True, text=True, timeout=120, cwd=TEMPLATE.parents[1])
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout and "failed" not in run.stdout


async def test_security_checks_are_listed_and_a_taken_name_fails_the_second_plugin(make_kernel):
    async def tripwire(kernel):
        return {"active": True, "armed_at": "start"}

    first = types.SimpleNamespace(security_checks=hookimpl(lambda register: register("tripwire", tripwire)))
    second = types.SimpleNamespace(security_checks=hookimpl(lambda register: register("tripwire", tripwire)),
                                   startup=hookimpl(lambda kernel: None))
    kernel = await make_kernel(load_entry_points=False, plugins={"first": first, "second": second})
    assert kernel.plugins.records["first"].ok
    assert "security check 'tripwire' is already registered by 'first'" in kernel.plugins.records["second"].error
    body = await (await make_client(build_app(kernel)).get("/api/security")).get_json()
    (system,) = [s for s in body["systems"] if s["name"] == "tripwire"]
    assert system["plugin"] == "first" and system["active"] is True and system["config"] == {"armed_at": "start"}


async def test_async_register_hook_is_reported_not_silently_lost(make_kernel):
    router = Router("asyncreg")

    @router.get("/api/asyncreg", cost=1)
    async def answer() -> dict:
        return {}

    async def register_routes(register):
        register(router)

    plugin = types.SimpleNamespace(register_routes=hookimpl(register_routes))
    kernel = await make_kernel(load_entry_points=False, plugins={"asyncreg": plugin})
    error = kernel.plugins.records["asyncreg"].error
    assert "register_routes is called synchronously; implement it with def, not async def" in error


async def test_a_failed_start_closes_what_it_opened(librefang_home):
    from librefang.kernel import create_kernel

    router = Router("clash")

    @router.get("/api/health", cost=1)
    async def clash() -> dict:
        return {}

    plugin = types.SimpleNamespace(register_routes=hookimpl(lambda register: register(router)))
    kernel = create_kernel(librefang_home, plugins={"clash": plugin}, load_entry_points=False)
    with pytest.raises(PluginError, match="duplicate route GET /api/health: plugin 'clash'.*'core'"):
        await kernel.start()
    assert kernel.db.engine is None  # the database was opened for migrations, and closed again
    assert not kernel.logstream.attached and kernel.tasks.count() == 0

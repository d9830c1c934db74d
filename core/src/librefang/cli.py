"""The ``librefang`` command line (click). Plugins add sub-commands through ``register_commands``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from librefang.client import call_daemon, daemon_url, resolve_home
from librefang.config import default_home

_home = resolve_home
_daemon_url = daemon_url


def _api(home: Path, method: str, path: str, **kwargs: Any) -> Any:
    return call_daemon(home, method, path, timeout=10, **kwargs)


class PluginCommands(click.Group):
    """Core commands, plus plugin commands loaded only when a name is not a core command."""

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from librefang.config import Config
        from librefang.plugins import PluginHost

        try:
            disabled = Config.load(default_home()).core.plugins.disabled
        except Exception:
            disabled = []
        host = PluginHost()
        host.load_entry_points(disabled)
        host.register_all()
        host.call("register_commands", cli=self)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            self._load_plugins()
            command = super().get_command(ctx, name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)


@click.group(cls=PluginCommands)
@click.version_option(package_name="librefang")
def main() -> None:
    """LibreFang: the agent operating system daemon."""


@main.command()
@click.option("--home", envvar="LIBREFANG_HOME", help="Home folder (default ~/.librefang)")
def init(home: str | None) -> None:
    """Create the home folder, a commented config.toml and data/."""
    from librefang.home import init_home

    path = _home(home)
    created = init_home(path)
    click.echo(f"LibreFang home: {path}")
    for item in created:
        click.echo(f"  created {item}")
    if not created:
        click.echo("  already initialised")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@main.command()
@click.option("--home", envvar="LIBREFANG_HOME")
@click.option("--host", default=None, help="Listen address (default from api_listen)")
@click.option("--port", type=int, default=None, help="Listen port (default from api_listen)")
@click.option("--dev", is_flag=True, help="Hot-reload plugins when their source changes")
@click.option("--foreground", is_flag=True, help="Stay attached instead of running in the background")
def start(home: str | None, host: str | None, port: int | None, dev: bool, foreground: bool) -> None:
    """Start the daemon (runs init first when there is no config)."""
    from librefang.errors import ConfigError
    from librefang.home import init_home
    from librefang.vault import VaultError

    path = _home(home)
    if not (path / "config.toml").exists():
        init_home(path)
    try:
        config = _offline_config(path)  # plugin sections too: a bad value stops start here
        cfg_host, cfg_port = config.listen()
        from librefang.vault import Vault

        Vault(path).resolve(config.core.api_key)  # a dangling vault: reference stops start too
    except (ConfigError, VaultError) as exc:
        raise click.ClickException(str(exc)) from None
    host = host or cfg_host
    port = port if port is not None else cfg_port
    running = _daemon_url(path)
    if running:
        raise click.ClickException(f"a daemon is already running for {path} at {running}")
    if not _port_free(host, port):
        raise click.ClickException(f"{host}:{port} is already in use (choose another with --port)")
    if not foreground:
        _start_background(path, host, port, dev)
        return
    _run_foreground(path, host, port, dev, config)


def _start_background(home: Path, host: str, port: int, dev: bool) -> None:
    import httpx

    log_path = home / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "librefang", "start", "--foreground", "--home", str(home),
            "--host", host, "--port", str(port)] + (["--dev"] if dev else [])
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the daemon exited with code {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                click.echo(f"LibreFang daemon started (pid {proc.pid})")
                click.echo(f"  API:     {url}/api")
                click.echo(f"  WebChat: {url}/")
                click.echo(f"  Log:     {log_path}")
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the daemon did not answer within 20 s; see {log_path}")


def _run_foreground(home: Path, host: str, port: int, dev: bool, config: Any) -> None:
    import gc

    # Start-up creates ~100k long-lived objects (modules, classes, pydantic models, routes) and
    # little cyclic garbage, and the cyclic GC would scan the growing heap again and again while
    # they are made: about a fifth of the start-up CPU with every plugin. It is off until the
    # server is up (see started() below) or the start fails.
    gc.disable()
    try:
        _serve_foreground(home, host, port, dev, config)
    finally:
        gc.enable()


def _serve_foreground(home: Path, host: str, port: int, dev: bool, config: Any) -> None:
    import asyncio
    import fcntl
    import gc

    from librefang.errors import ConfigError, PluginError
    from librefang.kernel import create_kernel
    from librefang.logs import setup_logging
    from librefang.netutil import is_loopback
    from librefang.server import loop_factory, serve, write_daemon_file
    from librefang.vault import VaultError

    lock = open(home / "daemon.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise click.ClickException(f"another daemon holds {home / 'daemon.lock'}") from None
    setup_logging(home, config.core.log_level)
    if not is_loopback(host) and not config.core.api_key and not os.environ.get("LIBREFANG_API_KEY"):
        click.echo(
            f"WARNING: listening on {host} without an api_key: remote clients will be refused "
            "(set api_key or LIBREFANG_API_KEY)", err=True,
        )
    try:
        kernel = create_kernel(home)
    except (ConfigError, VaultError) as exc:
        raise click.ClickException(str(exc)) from None

    def started() -> None:
        write_daemon_file(home, {"pid": os.getpid(), "url": f"http://{host}:{port}", "listen_addr": f"{host}:{port}",
                                 "started_at": time.time(), "version": kernel.version, "platform": sys.platform})
        click.echo(f"LibreFang listening on http://{host}:{port}", err=True)
        if not dev:
            # What start-up made lives as long as the process: kept out of every later collection
            # (less work per collection). Not with --dev, where reloads replace modules whose
            # cycles must stay collectable.
            gc.freeze()
        gc.enable()

    try:
        with asyncio.Runner(loop_factory=loop_factory(kernel.config.core.event_loop)) as runner:
            runner.run(serve(kernel, host, port, dev=dev, on_started=started))
    except (ConfigError, PluginError, VaultError) as exc:  # bad config value, duplicate route
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the port was taken between the check and the bind
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        from librefang.home import read_daemon_file

        info = read_daemon_file(home)
        if info and info.get("pid") == os.getpid():
            (home / "daemon.json").unlink(missing_ok=True)
    # The kernel has closed the database and run every shutdown hook; what is left is the
    # interpreter tearing down its modules, which costs most of a second of pure CPU for this
    # many imports. Flush and leave so `librefang stop` returns promptly.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@click.option("--home", envvar="LIBREFANG_HOME")
@click.option("--timeout", default=10.0, help="Seconds to wait before killing the process")
def stop(home: str | None, timeout: float) -> None:
    """Stop the daemon: POST /api/shutdown, then the PID from daemon.json."""
    import signal

    from librefang.home import pid_alive, read_daemon_file

    path = _home(home)
    info = read_daemon_file(path) or {}
    pid = info.get("pid") if isinstance(info.get("pid"), int) else 0
    if _daemon_url(path) is None or not pid_alive(pid):
        click.echo("no daemon is running")
        (path / "daemon.json").unlink(missing_ok=True)
        return
    try:
        _api(path, "POST", "/api/shutdown")
    except click.ClickException as exc:
        click.echo(f"shutdown request failed ({exc.message}); sending SIGTERM", err=True)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        click.echo(f"daemon {pid} killed")
    else:
        click.echo(f"daemon {pid} stopped")
    (path / "daemon.json").unlink(missing_ok=True)


@main.command()
@click.option("--home", envvar="LIBREFANG_HOME")
@click.option("--json", "as_json", is_flag=True)
def status(home: str | None, as_json: bool) -> None:
    """Show the running daemon's status."""
    body = _api(_home(home), "GET", "/api/status")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"LibreFang {body['version']} running, uptime {body['uptime_seconds']:.0f}s, auth {body['auth_mode']}")
    for key in ("agent_count", "active_agent_count"):
        if key in body:
            click.echo(f"  {key}: {body[key]}")
    for plugin in body["plugins"]:
        mark = "ok" if plugin["loaded"] else f"FAILED: {plugin['error']}"
        click.echo(f"  plugin {plugin['name']} {plugin['version']} {mark}")


def _plugin_rows(home: Path) -> list[dict[str, Any]]:
    from librefang.config import Config
    from librefang.plugins import PluginHost

    host = PluginHost()
    try:
        disabled = Config.load(home).core.plugins.disabled
    except Exception:
        disabled = []
    host.load_entry_points(disabled)
    host.register_all()
    return host.describe()


@main.command()
@click.option("--home", envvar="LIBREFANG_HOME")
@click.option("--json", "as_json", is_flag=True)
def plugins(home: str | None, as_json: bool) -> None:
    """List installed plugins (from the running daemon when there is one)."""
    path = _home(home)
    rows = _api(path, "GET", "/api/status")["plugins"] if _daemon_url(path) else _plugin_rows(path)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed")
    for row in rows:
        state = "loaded" if row["loaded"] else f"FAILED ({row['error']})"
        click.echo(f"{row['name']:<16} {row['distribution'] or '-':<24} {row['version'] or '-':<10} {state}")
        if row.get("routes"):
            click.echo(f"{'':<16} {len(row['routes'])} routes, hooks: {', '.join(row['hooks'])}")


@main.command()
@click.option("--home", envvar="LIBREFANG_HOME")
def doctor(home: str | None) -> None:
    """Check config, database, plugins and port; exit 1 when something is wrong."""
    import asyncio

    from librefang.config import redact
    from librefang.errors import ConfigError
    from librefang.storage import Database
    from librefang.vault import Vault, VaultError

    path = _home(home)
    problems = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal problems
        problems += 0 if ok else 1
        click.echo(f"[{'ok' if ok else 'FAIL'}] {what}{': ' + detail if detail else ''}")

    try:
        config = _offline_config(path)
        report(True, "config valid", str(config.path))
    except ConfigError as exc:
        report(False, "config valid", str(exc))
        sys.exit(1)
    try:
        Vault(path).resolve(config.core.api_key)
        names = Vault(path).names()
        report(True, "secrets", f"vault {'with ' + str(len(names)) + ' secrets' if names else 'empty'}")
    except VaultError as exc:
        report(False, "secrets", str(exc))
    try:
        db = Database(config.database_url())
    except (ConfigError, VaultError) as exc:
        report(False, "database writable", str(exc))
        sys.exit(1)

    async def check_db() -> bool:
        from sqlalchemy import text

        await db.open()
        try:
            async with db.begin() as conn:
                await conn.execute(text("CREATE TABLE IF NOT EXISTS librefang_doctor (x INTEGER)"))
                await conn.execute(text("DROP TABLE librefang_doctor"))
            return True
        finally:
            await db.close()

    try:
        report(asyncio.run(check_db()), "database writable", config.database_url().split("@")[-1])
    except Exception as exc:
        report(False, "database writable", f"{type(exc).__name__}: {redact(str(exc))}")
    for row in _plugin_rows(path):
        report(row["loaded"], f"plugin {row['name']}", row["error"] or row["version"])
    from librefang.home import read_daemon_file

    running = _daemon_url(path)
    if running:
        listen = (read_daemon_file(path) or {}).get("listen_addr") or running
        report(True, f"port {listen}", "in use by this home's running daemon")
    else:
        host, port = config.listen()
        report(_port_free(host, port), f"port {host}:{port} free")
    sys.exit(1 if problems else 0)


def _offline_config(home: Path) -> Any:
    """The config with every installed plugin's section validated (no daemon needed)."""
    from librefang.config import Config
    from librefang.errors import ConfigError
    from librefang.plugins import PluginBound, PluginHost

    config = Config.load(home)
    host = PluginHost()
    host.load_entry_points(config.core.plugins.disabled)
    host.register_all()
    errors: list[str] = []

    def register(owner: str, name: str, model: Any) -> None:
        try:
            config.add_section(name, model, owner)
        except ConfigError as exc:
            errors.append(str(exc))

    host.call("register_config", register=PluginBound(register))
    if errors:
        raise ConfigError("; ".join(errors))
    return config


@main.group()
def config() -> None:
    """Read and change config.toml."""


@config.command("get")
@click.argument("key", required=False)
@click.option("--home", envvar="LIBREFANG_HOME")
def config_get(key: str | None, home: str | None) -> None:
    """Print the effective value of KEY (dotted path), secrets redacted; all keys without KEY."""
    from librefang.config import redact
    from librefang.errors import ConfigError

    path = _home(home)
    try:
        data = _api(path, "GET", "/api/config") if _daemon_url(path) else redact(_offline_config(path).effective())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if key:
        for part in key.split("."):
            if not isinstance(data, dict) or part not in data:
                raise click.ClickException(f"no such key: {key}")
            data = data[part]
    click.echo(json.dumps(data, indent=2) if isinstance(data, dict | list) else str(data))


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--home", envvar="LIBREFANG_HOME")
def config_set(key: str, value: str, home: str | None) -> None:
    """Set KEY to VALUE (JSON when it parses as JSON, else a string; "null" removes the key).

    With a daemon running the change goes through POST /api/config/set and is applied at once;
    otherwise config.toml is edited directly. Either way comments are kept and a backup is made.
    """
    from librefang.configfile import apply_set, validate_key_path
    from librefang.errors import ApiError, ConfigError

    path = _home(home)
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    if _daemon_url(path):
        body = _api(path, "POST", "/api/config/set", json={"path": key, "value": parsed})
        click.echo(f"{key} set: {body['status']}")
        for reason in body.get("restart_reasons", []):
            click.echo(f"  {reason}")
        return
    try:
        current = _offline_config(path)
        parts = validate_key_path(key, set(current.section_models))
        apply_set(current, parts, parsed)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{key} set in {current.path} (no daemon running)")


@main.group()
def vault() -> None:
    """Manage secrets in vault.enc (referenced from config as vault:NAME)."""


def _vault(home: str | None) -> Any:
    from librefang.vault import Vault

    return Vault(_home(home))


@vault.command("set")
@click.argument("name")
@click.option("--home", envvar="LIBREFANG_HOME")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from standard input")
def vault_set(name: str, home: str | None, from_stdin: bool) -> None:
    """Store secret NAME; the value is prompted for (hidden) or read from stdin, never an argument."""
    from librefang.vault import VaultError

    value = sys.stdin.read().rstrip("\n") if from_stdin else click.prompt("value", hide_input=True)
    try:
        _vault(home).set(name, value)
    except (VaultError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stored {name}; reference it in config.toml as \"vault:{name}\"")


@vault.command("list")
@click.option("--home", envvar="LIBREFANG_HOME")
def vault_list(home: str | None) -> None:
    """List secret names (never values)."""
    from librefang.vault import VaultError

    try:
        names = _vault(home).names()
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    for name in names:
        click.echo(name)


@vault.command("remove")
@click.argument("name")
@click.option("--home", envvar="LIBREFANG_HOME")
def vault_remove(name: str, home: str | None) -> None:
    """Delete secret NAME."""
    from librefang.vault import VaultError

    try:
        existed = _vault(home).delete(name)
    except VaultError as exc:
        raise click.ClickException(str(exc)) from None
    if not existed:
        raise click.ClickException(f"no secret named {name}")
    click.echo(f"removed {name}")


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``librefang`` command line. Daemon commands run for real: ``python -m librefang start``
in a subprocess on a free port with a temporary LIBREFANG_HOME, then status/stop against it."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points

import httpx
import librefang
import pytest
from click.testing import CliRunner
from librefang.cli import main
from librefang.home import pid_alive
from librefang.routing import Router
from librefang.testing import free_port, start_live_server


@pytest.fixture
def cli_env(librefang_home, monkeypatch):
    """Environment of a CLI subprocess: the temp home, no plugins (fast and independent of others)."""
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBREFANG_")}
    env.update(LIBREFANG_HOME=str(librefang_home), LIBREFANG_LOAD_PLUGINS="", LIBREFANG_VAULT_KEY="00" * 32)
    return env


def run(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "librefang", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def port_is_free(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def stop_quietly(env, home):
    """Safety net: never leave a daemon behind when an assertion fails mid-test."""
    info = home / "daemon.json"
    if info.exists():
        run(env, "stop", "--timeout", "5")


def test_daemon_lifecycle(cli_env, librefang_home):
    home = librefang_home
    port = free_port()
    assert not (home / "config.toml").exists()
    try:
        started = run(cli_env, "start", "--port", str(port))
        assert started.returncode == 0, started.stderr + started.stdout
        assert "daemon started" in started.stdout
        # start ran init first
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert (home / "config.toml").exists() and (home / "data").is_dir()
        info = json.loads((home / "daemon.json").read_text())
        assert info["url"] == f"http://127.0.0.1:{port}" and pid_alive(info["pid"])
        assert httpx.get(info["url"] + "/api/health").json()["status"] == "ok"

        status = run(cli_env, "status")
        assert status.returncode == 0 and "running" in status.stdout and "auth loopback_only" in status.stdout

        second = run(cli_env, "start", "--foreground", "--port", str(free_port()))
        assert second.returncode == 1 and "already running" in second.stderr

        changed = run(cli_env, "config", "set", "rate_limit.api_requests_per_minute", "700")
        assert changed.returncode == 0 and "applied" in changed.stdout, changed.stderr
        assert httpx.get(info["url"] + "/api/config").json()["rate_limit"]["api_requests_per_minute"] == 700
        assert "api_requests_per_minute = 700" in (home / "config.toml").read_text()
        got = run(cli_env, "config", "get", "rate_limit.api_requests_per_minute")
        assert got.stdout.strip() == "700"
        refused = run(cli_env, "config", "set", "api_key", "x")
        assert refused.returncode == 1 and "403" in refused.stderr

        doctor = run(cli_env, "doctor")
        assert doctor.returncode == 0, doctor.stdout
        assert f"127.0.0.1:{port}" in doctor.stdout and "running daemon" in doctor.stdout

        t0 = time.monotonic()
        stopped = run(cli_env, "stop")
        elapsed = time.monotonic() - t0
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert "killed" not in stopped.stdout  # the graceful path worked, no SIGKILL needed
        assert not (home / "daemon.json").exists()
        assert not pid_alive(info["pid"]) and port_is_free(port)
        assert elapsed < 8
        after = run(cli_env, "status")
        assert after.returncode == 1 and "no daemon" in after.stderr
        assert run(cli_env, "stop").stdout.strip() == "no daemon is running"
    finally:
        stop_quietly(cli_env, home)


def test_secrets_stay_out_of_logs_and_responses(cli_env, librefang_home):
    from librefang.vault import Vault

    home = librefang_home
    api_key = "lf-admin-key-9f8e7d6c5b4a"
    vaulted = "vaulted-db-password-1a2b3c"
    Vault(home).set("DB_PASSWORD", vaulted)
    port = free_port()
    (home / "config.toml").write_text(
        f'api_listen = "127.0.0.1:{port}"\napi_key = "{api_key}"\nlog_level = "debug"\n'
        f'backup_target = "sftp://backup:{vaulted}@example.net/x"\n'
    )
    try:
        assert run(cli_env, "start").returncode == 0
        url = f"http://127.0.0.1:{port}"
        good = {"Authorization": f"Bearer {api_key}"}
        assert httpx.get(url + "/api/status", headers={"Authorization": "Bearer wrong-key-123456"}).status_code == 401
        assert httpx.get(url + "/api/status", headers={"Authorization": f"Bearer {api_key}x"}).status_code == 401
        config = httpx.get(url + "/api/config", headers=good)
        assert config.status_code == 200 and api_key not in config.text and vaulted not in config.text
        bad = httpx.post(url + "/api/config/set", headers=good, json={"path": "api_key", "value": api_key})
        assert bad.status_code == 403 and api_key not in bad.text
        assert httpx.post(url + "/api/config/reload", headers=good).status_code == 200
        status = run(cli_env, "status")  # the CLI authenticates with the key from config.toml
        assert status.returncode == 0 and "auth api_key" in status.stdout
        assert run(cli_env, "stop").returncode == 0
    finally:
        stop_quietly(cli_env, home)
    log = (home / "logs" / "daemon.log").read_text()
    assert "/api/config" in log  # the log did record the requests
    assert api_key not in log and vaulted not in log


def test_start_refuses_bad_config_naming_the_key(cli_env, librefang_home):
    (librefang_home / "config.toml").write_text('[rate_limit]\napi_requests_per_minute = "lots"\n')
    result = run(cli_env, "start", "--port", str(free_port()))
    assert result.returncode == 1
    assert "rate_limit.api_requests_per_minute" in result.stderr
    assert not (librefang_home / "daemon.json").exists()


def test_start_refuses_unresolvable_api_key(cli_env, librefang_home):
    (librefang_home / "config.toml").write_text('api_key = "vault:NOT_THERE"\n')
    result = run(cli_env, "start", "--port", str(free_port()))
    assert result.returncode == 1 and "vault:NOT_THERE is not in" in result.stderr


def test_start_refuses_a_busy_port(cli_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run(cli_env, "start", "--port", str(port))
    assert result.returncode == 1 and "already in use" in result.stderr


# -- in-process commands (no daemon involved) ------------------------------------------------------


def test_init_creates_private_home(librefang_home):
    home = librefang_home / "fresh"
    runner = CliRunner()
    result = runner.invoke(main, ["init", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
    assert (home / "data").is_dir()
    text = (home / "config.toml").read_text()
    assert text.startswith("# LibreFang configuration") and 'api_listen = "127.0.0.1:4545"' in text
    again = runner.invoke(main, ["init", "--home", str(home)])
    assert "already initialised" in again.output
    assert (home / "config.toml").read_text() == text  # never overwritten


def test_offline_config_get_and_set(librefang_home, monkeypatch):
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    runner = CliRunner()
    runner.invoke(main, ["init"])
    path = librefang_home / "config.toml"
    result = runner.invoke(main, ["config", "set", "log_level", "debug"])
    assert result.exit_code == 0 and "no daemon running" in result.output
    text = path.read_text()
    assert 'log_level = "debug"' in text and "# trace | debug | info" in text
    assert len(list((librefang_home / "backups").glob("config-*.toml"))) == 1
    assert runner.invoke(main, ["config", "get", "log_level"]).output.strip() == "debug"
    cors = runner.invoke(main, ["config", "set", "cors_origin", '["https://a.example"]'])
    assert cors.exit_code == 0 and json.loads(runner.invoke(main, ["config", "get", "cors_origin"]).output) == [
        "https://a.example"]
    for args, message in [
        (["log_level", "shouting"], "log_level"),
        (["api_key", "abc"], "cannot be set"),
        (["../x", "1"], "invalid key path"),
    ]:
        before = path.read_text()
        bad = runner.invoke(main, ["config", "set", *args])
        assert bad.exit_code == 1 and message in bad.output, bad.output
        assert path.read_text() == before
    assert runner.invoke(main, ["config", "get", "no.such"]).exit_code == 1
    assert runner.invoke(main, ["config", "get"]).output.count("api_key") == 1


def test_doctor(librefang_home, monkeypatch):
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    runner = CliRunner()
    port = free_port()
    (librefang_home / "config.toml").write_text(f'api_listen = "127.0.0.1:{port}"\n')
    ok = runner.invoke(main, ["doctor"])
    assert ok.exit_code == 0, ok.output
    assert "[ok] config valid" in ok.output and "[ok] database writable" in ok.output
    assert f"[ok] port 127.0.0.1:{port} free" in ok.output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        busy = runner.invoke(main, ["doctor"])
    assert busy.exit_code == 1 and "[FAIL] port" in busy.output
    (librefang_home / "config.toml").write_text('api_key = "vault:MISSING"\n')
    secret = runner.invoke(main, ["doctor"])
    assert secret.exit_code == 1 and "[FAIL] secrets" in secret.output
    (librefang_home / "config.toml").write_text("log_level = 3\n")
    bad = runner.invoke(main, ["doctor"])
    assert bad.exit_code == 1 and "[FAIL] config valid" in bad.output and "log_level" in bad.output


def test_plugins_lists_installed_entry_points(librefang_home, monkeypatch):
    monkeypatch.delenv("LIBREFANG_LOAD_PLUGINS", raising=False)
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    installed = {ep.name for ep in entry_points(group="librefang.plugins")}
    assert {row["name"] for row in rows} == installed
    for row in rows:
        assert set(row) >= {"name", "version", "loaded", "error", "hooks", "routes"}
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    assert CliRunner().invoke(main, ["plugins"]).output.strip() == "no plugins installed"


# -- graceful shutdown ------------------------------------------------------------------------------


class SlowPlugin:
    def __init__(self) -> None:
        self.shut_down = False

    @librefang.hookimpl
    def register_routes(self, register):
        import asyncio

        router = Router("slow")

        @router.get("/api/slow-test", cost=1)
        async def slow():
            await asyncio.sleep(1.0)
            return {"finished": True}

        register(router)

    @librefang.hookimpl
    def shutdown(self, kernel):
        self.shut_down = True


def test_shutdown_is_graceful(librefang_home):
    plugin = SlowPlugin()
    server = start_live_server(librefang_home, plugins={"slow": plugin}, load_entry_points=False)
    try:
        result = {}

        def call_slow():
            result["response"] = httpx.get(server.url + "/api/slow-test", timeout=10)

        worker = threading.Thread(target=call_slow)
        worker.start()
        time.sleep(0.3)  # the slow request is now in flight
        response = httpx.post(server.url + "/api/shutdown")
        assert response.status_code == 202 and response.json() == {"status": "shutting_down"}
        worker.join(10)
        assert result["response"].status_code == 200 and result["response"].json() == {"finished": True}
        server.thread.join(10)
        assert not server.thread.is_alive()
        assert plugin.shut_down
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/api/health", timeout=2)
    finally:
        server.stop()


HELLO_PLUGIN = '''
import click
import librefang
from pydantic import BaseModel, Field


class HelloConfig(BaseModel):
    greeting: str = "hello"
    repeat: int = Field(1, ge=1, le=5)


@librefang.hookimpl
def register_config(register):
    register("hello", HelloConfig)


@librefang.hookimpl
def register_commands(cli):
    @cli.command("hello")
    def hello():
        """Say hello (added by a plugin)."""
        click.echo("hello from a plugin command")
'''


def test_installed_plugins_in_doctor_config_and_commands(plugin_site, librefang_home, monkeypatch, cli_env):
    plugin_site.add("hello", {"plugin.py": HELLO_PLUGIN})
    plugin_site.add("broken", {"plugin.py": "raise ImportError('missing dependency frobnicate')\n"})
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "hello,broken")
    runner = CliRunner()
    runner.invoke(main, ["init"])

    result = runner.invoke(main, ["config", "set", "hello.greeting", "hey"])
    assert result.exit_code == 0, result.output
    assert "[hello]" in (librefang_home / "config.toml").read_text()
    assert runner.invoke(main, ["config", "get", "hello.greeting"]).output.strip() == "hey"
    bad = runner.invoke(main, ["config", "set", "hello.repeat", "99"])
    assert bad.exit_code == 1 and "hello.repeat" in bad.output

    env = {**cli_env, "LIBREFANG_LOAD_PLUGINS": "hello,broken", "PYTHONPATH": str(plugin_site.root)}
    doctor = run(env, "doctor")
    assert doctor.returncode == 1
    assert "[ok] plugin hello" in doctor.stdout
    assert "[FAIL] plugin broken" in doctor.stdout and "frobnicate" in doctor.stdout
    command = run(env, "hello")
    assert command.returncode == 0 and command.stdout.strip() == "hello from a plugin command"
    (librefang_home / "config.toml").write_text("[hello]\nrepeat = 0\n")
    start = run(env, "start", "--port", str(free_port()))
    assert start.returncode == 1 and "hello.repeat" in start.stderr

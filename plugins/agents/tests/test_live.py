"""Against real servers on a socket: agents survive a restart in their state; the CLI drives a daemon."""

from __future__ import annotations

import json
import os

import httpx
import librefang_agents.plugin as agents_plugin
from click.testing import CliRunner
from librefang.testing import start_live_server

HELLO = 'name = "{name}"\ndescription = "persistent"\n[model]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'


def serve(home):
    return start_live_server(home, plugins={"agents": agents_plugin}, load_entry_points=False)


def test_agents_come_back_after_restart_in_their_state(librefang_home):
    (librefang_home / "config.toml").write_text('[default_model]\nprovider = "ollama"\nmodel = "llama3.2"\n')
    server = serve(librefang_home)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            listing = http.get("/api/agents").json()
            assert [i["name"] for i in listing["items"]] == ["assistant"]
            assert listing["items"][0]["model_provider"] == "ollama" and listing["items"][0]["model_name"] == "llama3.2"
            ids = {}
            for name in ("keeper", "sleeper", "watcher", "goner"):
                response = http.post("/api/agents", json={"manifest_toml": HELLO.format(name=name)})
                assert response.status_code == 201
                ids[name] = response.json()["agent_id"]
            assert http.put(f"/api/agents/{ids['sleeper']}/suspend").status_code == 200
            assert http.put(f"/api/agents/{ids['watcher']}/mode", json={"mode": "observe"}).status_code == 200
            assert http.patch(f"/api/agents/{ids['keeper']}/identity", json={"emoji": "🐢"}).status_code == 200
            assert http.put(f"/api/agents/{ids['keeper']}/files/memo.txt", json={"content": "remember"}).status_code == 200
            assert http.delete(f"/api/agents/{ids['goner']}").status_code == 200
            before = {i["id"]: i for i in http.get("/api/agents").json()["items"]}
    finally:
        server.stop()
    server = serve(librefang_home)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            after = {i["id"]: i for i in http.get("/api/agents").json()["items"]}
            assert after == before  # same ids, names, states, modes, timestamps, sessions
            assert after[ids["sleeper"]]["state"] == "Suspended" and after[ids["keeper"]]["state"] == "Running"
            assert after[ids["watcher"]]["mode"] == "observe"
            assert [i["name"] for i in after.values()].count("assistant") == 1  # not seeded twice
            keeper = http.get(f"/api/agents/{ids['keeper']}").json()
            assert keeper["identity"] == {"emoji": "🐢"} and keeper["model"]["model"] == "gpt-4o-mini"
            assert http.get(f"/api/agents/{ids['keeper']}/files/memo.txt").json()["content"] == "remember"
            assert http.delete(f"/api/agents/{ids['goner']}").json()["status"] == "already-deleted"
            status = http.get("/api/status").json()
            assert status["agent_count"] == 4 and status["active_agent_count"] == 3
    finally:
        server.stop()


def test_cli_agent_commands_against_a_running_daemon(librefang_home, tmp_path, monkeypatch):
    from librefang.cli import main

    server = serve(librefang_home)
    try:
        (librefang_home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "url": server.url}))
        runner = CliRunner()
        manifest = tmp_path / "cli-agent.toml"
        manifest.write_text(HELLO.format(name="cli-agent"))
        result = runner.invoke(main, ["agent", "spawn", str(manifest), "--home", str(librefang_home)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("spawned cli-agent (")
        result = runner.invoke(main, ["agent", "spawn", "--template", "coder", "--name", "cli-coder", "--json",
                                      "--home", str(librefang_home)])
        assert result.exit_code == 0, result.output
        coder_id = json.loads(result.output)["agent_id"]
        result = runner.invoke(main, ["agent", "list", "--home", str(librefang_home)])
        assert result.exit_code == 0
        assert "cli-agent" in result.output and "cli-coder" in result.output and "assistant" in result.output
        result = runner.invoke(main, ["agent", "show", "cli-coder", "--home", str(librefang_home)])
        assert result.exit_code == 0 and coder_id in result.output and "shell_exec" in result.output
        result = runner.invoke(main, ["agent", "show", coder_id, "--json", "--home", str(librefang_home)])
        assert json.loads(result.output)["profile"] == "coding"
        result = runner.invoke(main, ["agent", "kill", "cli-coder", "--home", str(librefang_home)])
        assert result.exit_code == 0 and result.output.strip() == f"killed: {coder_id}"
        result = runner.invoke(main, ["agent", "show", "cli-coder", "--home", str(librefang_home)])
        assert result.exit_code != 0 and "no agent named" in result.output
        bad = tmp_path / "bad.toml"
        bad.write_text('name = "bad"\n[model]\ntemperature = 9\n')
        result = runner.invoke(main, ["agent", "spawn", str(bad), "--home", str(librefang_home)])
        assert result.exit_code != 0 and "400" in result.output and "model.temperature" in result.output
        result = runner.invoke(main, ["agent", "spawn", "--home", str(librefang_home)])
        assert result.exit_code != 0
    finally:
        server.stop()
    result = CliRunner().invoke(main, ["agent", "list", "--home", str(tmp_path / "elsewhere")])
    assert result.exit_code != 0 and "no daemon is running" in result.output

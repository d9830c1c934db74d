"""End to end over real sockets: a daemon (Hypercorn on 127.0.0.1) with the approvals plugin, a turn
whose gated tool call waits, and an approval sent by a separate HTTP client."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import librefang_agents.plugin as agents_plugin
import librefang_approvals.plugin as approvals_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import pytest
from click.testing import CliRunner
from librefang.cli import main
from librefang.testing import start_live_server, write_config

from tests.fakes.llm_server import Script, ToolCall

AGENT = 'name = "live-writer"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n'


async def test_a_live_turn_waits_for_an_http_approval(librefang_home: Path, fake_llm: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-approvals-live-0123456789")
    write_config(librefang_home, "[agents]\nspawn_default_agent = false\n"
                                 f'[providers]\nprovider_urls = {{ openai = "{fake_llm.base_url("openai")}" }}\n')
    plugins: dict[str, Any] = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin,
                               "approvals": approvals_plugin}
    server = await asyncio.to_thread(start_live_server, librefang_home, plugins=plugins, load_entry_points=False)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as user, \
                httpx.AsyncClient(base_url=server.url, timeout=30) as reviewer:
            spawned = await user.post("/api/agents", json={"manifest_toml": AGENT})
            assert spawned.status_code in (200, 201), spawned.text
            agent = spawned.json()["agent_id"]
            fake_llm.script(Script(tool_calls=[ToolCall("file_write", {"path": "live.txt", "content": "ok"}, id="l1")]),
                            Script(text="saved"))
            turn = asyncio.ensure_future(user.post(f"/api/agents/{agent}/message", json={"message": "save it"}))
            deadline = time.monotonic() + 15
            while (await reviewer.get("/api/approvals/count")).json()["pending"] == 0:
                assert time.monotonic() < deadline and not turn.done()
                await asyncio.sleep(0.05)
            [request] = (await reviewer.get("/api/approvals?status=pending")).json()["approvals"]
            assert request["tool_name"] == "file_write" and not turn.done()
            decided = await reviewer.post(f"/api/approvals/{request['id']}/approve", json={})
            assert decided.status_code == 200 and decided.json()["status"] == "approved"
            response = await asyncio.wait_for(turn, 15)
            assert response.status_code == 200 and response.json()["response"] == "saved"
            assert (librefang_home / "workspaces" / "agents" / "live-writer" / "live.txt").read_text() == "ok"
            twice = await reviewer.post(f"/api/approvals/{request['id']}/approve", json={})
            assert twice.status_code == 409

            # The command line decides through the same API.
            manual = (await reviewer.post("/api/approvals", json={"agent_id": agent, "tool_name": "shell_exec",
                                                                  "action_summary": "make clean"})).json()
            (librefang_home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "url": server.url}))
            home = ["--home", str(librefang_home)]
            listed = await asyncio.to_thread(CliRunner().invoke, main, ["approvals", "list", *home])
            assert listed.exit_code == 0, listed.output
            assert manual["id"] in listed.output and "shell_exec" in listed.output and "make clean" in listed.output
            rejected = await asyncio.to_thread(CliRunner().invoke, main, ["approvals", "reject", manual["id"], *home])
            assert rejected.exit_code == 0 and rejected.output.strip() == f"{manual['id']} rejected"
            again = await asyncio.to_thread(CliRunner().invoke, main, ["approvals", "approve", manual["id"], *home])
            assert again.exit_code != 0 and "409" in again.output
            everything = await asyncio.to_thread(CliRunner().invoke, main, ["approvals", "list", "--all", "--json", *home])
            assert {a["status"] for a in json.loads(everything.output)["approvals"]} == {"approved", "rejected"}
    finally:
        await asyncio.to_thread(server.stop)

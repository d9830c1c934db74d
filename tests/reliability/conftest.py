"""Fixtures of the reliability harness: one fake LLM server and one live daemon per session for the
fuzzing and hostile-input tests (the crash and soak tests start daemons of their own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.reliability.daemon import Daemon, agent_manifest


@pytest.fixture(scope="session")
def fake_llm_session() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer().start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture(scope="session")
def live_daemon(tmp_path_factory: pytest.TempPathFactory, fake_llm_session: FakeLLMServer) -> Iterator[Daemon]:
    """A real daemon process with every installed plugin, an API key and the fake provider."""
    home: Path = tmp_path_factory.mktemp("reliability") / "home"
    daemon = Daemon(home, fake_llm_url=fake_llm_session.url)
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        # A graceful stop after the fuzzing: the daemon must still shut down cleanly.
        assert code == 0, f"daemon exit code {code}:\n{daemon.log_tail()}"


def ensure_agent(daemon: Daemon, name: str) -> str:
    """The id of a running agent called ``name`` (spawned again if a test killed it)."""
    with daemon.client() as client:
        found = [i for i in client.get("/api/agents", params={"q": name, "limit": 50}).json()["items"]
                 if i["name"] == name]
        if found:
            return found[0]["id"]
        response = client.post("/api/agents", json={"manifest_toml": agent_manifest(name)})
        assert response.status_code == 201, response.text
        return response.json()["agent_id"]

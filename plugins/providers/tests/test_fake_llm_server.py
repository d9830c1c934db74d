"""The fake provider server itself: thread and subprocess modes, control endpoints, model lists."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fakes.llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[3]


def test_threaded_server_control_endpoints_and_default_reply() -> None:
    server = FakeLLMServer(models=["m-1", "m-2"]).start_in_thread()
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.post("/_fake/scripts", json=[{"text": "scripted"}, {"fault": "auth"}]).json() == {"queued": 2}
            body = {"model": "m-1", "messages": [{"role": "user", "content": "ping"}]}
            first = client.post("/v1/chat/completions", json=body)
            assert first.json()["choices"][0]["message"]["content"] == "scripted"
            second = client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-abc"})
            assert second.status_code == 401 and "sk-abc" in second.json()["error"]["message"]
            third = client.post("/v1/chat/completions", json=body)  # queue empty: echo
            assert third.json()["choices"][0]["message"]["content"] == "Fake reply to: ping"
            recorded = client.get("/_fake/requests").json()
            assert [r["format"] for r in recorded] == ["openai"] * 3 and recorded[1]["headers"]["authorization"]
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["m-1", "m-2"]
            assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ["m-1", "m-2"]
            assert client.get("/v1beta/models").json()["models"][0]["name"] == "models/m-1"
            assert client.post("/_fake/reset").json() == {"reset": True}
            assert client.get("/_fake/requests").json() == []
            assert client.post("/nowhere", json={}).status_code == 404
    finally:
        server.stop_thread()


def test_runs_as_a_module_for_demos() -> None:
    with subprocess.Popen([sys.executable, "-m", "tests.fakes.llm_server", "--port", "0"], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            assert line.startswith("fake LLM provider on http://127.0.0.1:")
            url = line.split()[-1]
            deadline = time.monotonic() + 10
            while True:
                try:
                    reply = httpx.post(url + "/api/chat", json={"model": "llama", "stream": False,
                                                                "messages": [{"role": "user", "content": "hi"}]})
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert reply.json()["message"]["content"] == "Fake reply to: hi" and reply.json()["done"] is True
        finally:
            proc.terminate()

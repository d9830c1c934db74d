"""GitHub Copilot OAuth device flow against a fake GitHub on 127.0.0.1."""

from __future__ import annotations

import json
from collections import deque

import pytest
from librefang_providers.oauth import FLOWS_KEY

TOKEN = "gho_fakeCopilotToken0123456789abcdef"
DEVICE = {"device_code": "dev-code-123", "user_code": "WDJB-MJHT", "verification_uri": "https://github.com/login/device",
          "expires_in": 900, "interval": 5}


@pytest.fixture
def config_text(fake_server) -> str:
    return (f'[providers]\ncopilot_device_code_url = "{fake_server.url}/login/device/code"\n'
            f'copilot_token_url = "{fake_server.url}/login/oauth/access_token"\ncopilot_client_id = "Iv1.test"\n')


def token_answers(fake_server, *answers):
    queue = deque(answers)
    fake_server.on("POST", "/login/oauth/access_token", lambda seen: _json(queue.popleft()))


def _json(value):
    return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


def due_now(kernel):
    # Skip GitHub's polling interval instead of sleeping through it.
    for flow in kernel.services[FLOWS_KEY].values():
        flow.next_poll_at = 0


async def test_device_flow_completes_and_stores_the_token_in_the_vault(api, provider_kernel, fake_server):
    fake_server.on("POST", "/login/device/code", DEVICE)
    token_answers(fake_server, {"error": "authorization_pending"}, {"error": "slow_down", "interval": 10},
                  {"access_token": TOKEN, "token_type": "bearer", "scope": "read:user"})
    response = await api.post("/api/providers/github-copilot/oauth/start")
    assert response.status_code == 200
    started = await response.get_json()
    assert started["user_code"] == "WDJB-MJHT" and started["interval"] == 5 and started["expires_in"] == 900
    assert "dev-code-123" not in json.dumps(started)  # the device code stays server-side
    assert fake_server.seen[0].form() == {"client_id": "Iv1.test", "scope": "read:user"}
    poll = f"/api/providers/github-copilot/oauth/poll/{started['poll_id']}"

    assert await (await api.get(poll)).get_json() == {"status": "pending", "interval": 5, "error": None,
                                                      "auth_status": None}
    calls = len(fake_server.seen)
    assert (await (await api.get(poll)).get_json())["status"] == "pending"
    assert len(fake_server.seen) == calls  # polled before the interval: GitHub is not asked again
    due_now(provider_kernel)
    assert (await (await api.get(poll)).get_json())["interval"] == 10  # slow_down honoured
    due_now(provider_kernel)
    done = await (await api.get(poll)).get_data(as_text=True)
    assert TOKEN not in done
    assert json.loads(done)["status"] == "complete" and json.loads(done)["auth_status"] == "configured"
    assert fake_server.seen[-1].form() == {"client_id": "Iv1.test", "device_code": "dev-code-123",
                                           "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
    assert provider_kernel.vault.get("GITHUB_COPILOT_TOKEN") == TOKEN
    provider = await (await api.get("/api/providers/github-copilot")).get_json()
    assert provider["auth_status"] == "configured"
    assert (await api.get(poll)).status_code == 404  # a finished flow is gone


@pytest.mark.parametrize(("answer", "status"), [
    ({"error": "access_denied"}, "denied"),
    ({"error": "expired_token"}, "expired"),
    ({"error": "incorrect_client_credentials", "error_description": "The client_id is not valid."}, "error"),
])
async def test_device_flow_end_states(api, provider_kernel, fake_server, answer, status):
    fake_server.on("POST", "/login/device/code", DEVICE)
    token_answers(fake_server, answer)
    poll_id = (await (await api.post("/api/providers/github-copilot/oauth/start")).get_json())["poll_id"]
    body = await (await api.get(f"/api/providers/github-copilot/oauth/poll/{poll_id}")).get_json()
    assert body["status"] == status
    if status == "error":
        assert body["error"] == "The client_id is not valid."
    assert provider_kernel.vault.get("GITHUB_COPILOT_TOKEN") is None


async def test_device_flow_upstream_failures(api, fake_server):
    fake_server.on("POST", "/login/device/code", (500, {"Content-Type": "text/html"}, b"<h1>oops</h1>"))
    response = await api.post("/api/providers/github-copilot/oauth/start")
    assert response.status_code == 502 and (await response.get_json())["details"]["upstream_status"] == 500
    fake_server.on("POST", "/login/device/code", _json({"error": "unauthorized_client",
                                                        "error_description": "Device flow is disabled"}))
    response = await api.post("/api/providers/github-copilot/oauth/start")
    assert response.status_code == 502
    assert "Device flow is disabled" in (await response.get_json())["error"]


async def test_poll_bad_input(api):
    response = await api.get("/api/providers/github-copilot/oauth/poll/does-not-exist")
    assert response.status_code == 404 and (await response.get_json())["code"] == "poll_not_found"
    response = await api.get("/api/providers/github-copilot/oauth/poll/" + "a" * 100)
    assert response.status_code == 400
    response = await api.get("/api/providers/github-copilot/oauth/poll/bad$id")
    assert response.status_code == 400
    assert (await api.get("/api/providers/github-copilot/oauth/start")).status_code == 405


async def test_github_unreachable_is_bad_gateway(make_kernel):
    from librefang.app import build_app
    from librefang.testing import make_client
    from librefang_providers import plugin

    config = '[providers]\ncopilot_device_code_url = "http://127.0.0.1:9/login/device/code"\n'
    kernel = await make_kernel(plugins={"providers": plugin}, load_entry_points=False, config=config)
    response = await make_client(build_app(kernel)).post("/api/providers/github-copilot/oauth/start")
    assert response.status_code == 502 and (await response.get_json())["code"] == "upstream_unreachable"

"""GET /api/config(/schema), POST /api/config/set and POST /api/config/reload."""

from __future__ import annotations

import json
import logging

import librefang
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from pydantic import BaseModel, Field

KEY = "test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
REMOTE = {"client": ("203.0.113.9", 40000)}
CONFIG = f"""\
# top comment that must survive
api_key = "{KEY}"
future_option = "kept"   # unknown key with a comment

[rate_limit]
# limiter comment
api_requests_per_minute = 500

[greeter]
greeting = "hi"
"""


class GreeterConfig(BaseModel):
    greeting: str = "hello"
    repeat: int = Field(1, ge=1, le=10)


class GreeterPlugin:
    @librefang.hookimpl
    def register_config(self, register):
        register("greeter", GreeterConfig)


@pytest.fixture
async def setup(make_kernel, librefang_home):
    kernel = await make_kernel(plugins={"greeter": GreeterPlugin()}, load_entry_points=False, config=CONFIG)
    app = build_app(kernel)
    return kernel, make_client(app), librefang_home / "config.toml"


@pytest.fixture
def restore_log_level():
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


async def _set(client, payload):
    return await client.post("/api/config/set", json=payload, headers=AUTH)


def _backups(home):
    return sorted((home / "backups").glob("config-*.toml")) if (home / "backups").exists() else []


async def test_get_config_requires_auth_and_redacts(setup):
    kernel, client, _ = setup
    assert (await client.get("/api/config", scope_base=REMOTE)).status_code == 401
    response = await client.get("/api/config", headers=AUTH)
    body = await response.get_json()
    assert body["api_key"] == "***" and KEY not in json.dumps(body)
    assert body["future_option"] == "kept" and body["greeter"]["greeting"] == "hi"


async def test_schema_is_public_and_includes_plugin_sections(setup):
    _, client, _ = setup
    response = await client.get("/api/config/schema", scope_base=REMOTE)
    assert response.status_code == 200
    schema = await response.get_json()
    assert schema["properties"]["greeter"]["x-plugin"] == "greeter"
    assert "api_requests_per_minute" in json.dumps(schema["$defs"]["RateLimitConfig"])


async def test_set_writes_file_keeps_comments_backs_up_and_applies(setup, librefang_home):
    kernel, client, path = setup
    sub = kernel.bus.subscribe("config.reloaded")
    before = path.read_text()
    response = await _set(client, {"path": "rate_limit.api_requests_per_minute", "value": 900})
    assert response.status_code == 200, await response.get_data()
    body = await response.get_json()
    assert body["status"] == "applied" and body["path"] == "rate_limit.api_requests_per_minute"
    assert body["restart_required"] is False
    assert any("rate limiter" in a for a in body["hot_actions_applied"])
    text = path.read_text()
    assert "api_requests_per_minute = 900" in text
    for kept in ("# top comment that must survive", "# limiter comment", 'future_option = "kept"   # unknown key'):
        assert kept in text
    backups = _backups(librefang_home)
    assert len(backups) == 1 and backups[0].read_text() == before and body["backup"] == backups[0].name
    assert kernel.config.core.rate_limit.api_requests_per_minute == 900
    assert kernel.edge.limiter.burst == 900
    event = sub.queue.get_nowait()
    assert event.topic == "config.reloaded" and event.data["status"] == "applied"
    items, _ = await kernel.audit.recent(5)
    entry = next(i for i in items if i["action"] == "ConfigChange")
    assert entry["target"] == "rate_limit.api_requests_per_minute" and '"value": 900' in entry["detail"]


async def test_set_plugin_section_and_remove_with_null(setup):
    kernel, client, path = setup
    response = await _set(client, {"path": "greeter.repeat", "value": 3})
    assert response.status_code == 200
    assert kernel.config.section("greeter").repeat == 3
    assert any("[greeter]" in a for a in (await response.get_json())["hot_actions_applied"])
    response = await _set(client, {"path": "greeter.greeting", "value": None})
    assert response.status_code == 200
    assert "greeting" not in path.read_text()
    assert kernel.config.section("greeter").greeting == "hello"  # back to the default


async def test_set_restart_key_reports_restart(setup):
    kernel, client, path = setup
    response = await _set(client, {"path": "plugins.disabled", "value": ["greeter"]})
    body = await response.get_json()
    assert response.status_code == 200 and body["status"] == "restart_required"
    assert body["restart_reasons"] and "plugins.disabled" in body["restart_reasons"][0]
    assert "disabled = [\"greeter\"]" in path.read_text()
    assert kernel.config.core.plugins.disabled == []  # the running value is kept until restart


@pytest.mark.parametrize("path", ["api_key", "api_listen", "database_url", "greeter.bot_token",
                                  "rate_limit.secret", "future_option", "newsection.x", "audit.client_id"])
async def test_set_refuses_non_writable_keys(setup, path, librefang_home):
    _, client, config_path = setup
    before = config_path.read_text()
    response = await _set(client, {"path": path, "value": "x"})
    assert response.status_code == 403
    body = await response.get_json()
    assert body["code"] == "key_not_writable" and body["request_id"]
    assert config_path.read_text() == before and not _backups(librefang_home)


@pytest.mark.parametrize(
    "payload",
    [
        {"path": "../config", "value": 1},
        {"path": "/etc/passwd", "value": 1},
        {"path": "rate_limit/../../x", "value": 1},
        {"path": "rate_limit..x", "value": 1},
        {"path": "a.b.c.d", "value": 1},
        {"path": "rate_limit.api requests", "value": 1},
        {"path": "", "value": 1},
        {"path": "rate_limit.retry_after_secs"},
        {"value": 5},
        {"path": 5, "value": 5},
        {"path": "log_level", "value": "debug", "extra": 1},
        {"path": "rate_limit.retry_after_secs", "value": -5},
        {"path": "log_level", "value": "shouting"},
        {"path": "cors_origin", "value": ["x" * 70000]},
        {"path": "cors_origin", "value": [1, None]},
    ],
)
async def test_set_bad_input_is_400_and_file_untouched(setup, payload, librefang_home):
    kernel, client, path = setup
    before = path.read_text()
    response = await _set(client, payload)
    assert response.status_code == 400, (payload, await response.get_data())
    body = await response.get_json()
    assert set(body) >= {"error", "code", "request_id"}
    assert path.read_text() == before and not _backups(librefang_home)
    assert kernel.config.core.rate_limit.retry_after_secs == 60


async def test_set_invalid_value_error_names_key(setup):
    _, client, _ = setup
    response = await _set(client, {"path": "greeter.repeat", "value": 50})
    body = await response.get_json()
    assert response.status_code == 400 and "greeter.repeat" in body["error"]


async def test_set_on_unparsable_file_is_409_and_untouched(setup, librefang_home):
    _, client, path = setup
    path.write_text('api_key = "oops\n')
    response = await _set(client, {"path": "log_level", "value": "debug"})
    assert response.status_code == 409 and (await response.get_json())["code"] == "config_unparsable"
    assert path.read_text() == 'api_key = "oops\n' and not _backups(librefang_home)


async def test_set_rejects_non_json_and_wrong_type_body(setup):
    _, client, _ = setup
    response = await client.post("/api/config/set", data="path=x", headers={**AUTH, "Content-Type": "text/plain"})
    assert response.status_code == 415
    response = await client.post("/api/config/set", data="{", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    response = await client.post("/api/config/set", json=["log_level", "debug"], headers=AUTH)
    assert response.status_code == 400


async def test_reload_applies_live_keys_and_reports_restart_keys(setup, restore_log_level):
    kernel, client, path = setup
    text = path.read_text().replace("api_requests_per_minute = 500", "api_requests_per_minute = 42")
    text = text.replace("# top comment", 'log_level = "debug"\napi_listen = "127.0.0.1:9999"\n'
                        'cors_origin = ["https://app.example"]\ntrusted_proxies = ["10.0.0.1"]\n# top comment')
    path.write_text(text)
    response = await client.post("/api/config/reload", headers=AUTH)
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "partial" and body["restart_required"] is True
    assert [r.split(" ")[0] for r in body["restart_reasons"]] == ["api_listen"]
    applied = " ".join(body["hot_actions_applied"])
    for action in ("log level", "rate limiter", "CORS", "trusted proxies"):
        assert action in applied
    assert logging.getLogger().level == logging.DEBUG
    assert kernel.edge.limiter.burst == 42
    assert "https://app.example" in kernel.edge.cors_origins
    assert kernel.config.core.api_listen == "127.0.0.1:4545"  # still what the daemon listens on
    preflight = await client.options("/api/status", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert preflight.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    again = await (await client.post("/api/config/reload", headers=AUTH)).get_json()
    assert again["status"] == "restart_required" and not again["hot_actions_applied"]


async def test_reload_api_key_change_applies_live(setup):
    kernel, client, path = setup
    path.write_text(path.read_text().replace(KEY, "brand-new-key-0987654321"))
    response = await client.post("/api/config/reload", headers=AUTH)
    body = await response.get_json()
    assert body["hot_actions_applied"] == ["API key replaced"] and KEY not in json.dumps(body)
    assert (await client.get("/api/status", headers=AUTH)).status_code == 401
    new = {"Authorization": "Bearer brand-new-key-0987654321"}
    assert (await client.get("/api/status", headers=new)).status_code == 200


async def test_reload_without_changes(setup):
    _, client, _ = setup
    body = await (await client.post("/api/config/reload", headers=AUTH)).get_json()
    assert body == {"status": "no_changes", "restart_required": False, "restart_reasons": [],
                    "hot_actions_applied": [], "noop_changes": [], "warnings": []}


async def test_reload_reports_unused_keys(setup):
    _, client, path = setup
    path.write_text(path.read_text() + "\n[mystery]\nx = 1\n")
    body = await (await client.post("/api/config/reload", headers=AUTH)).get_json()
    assert body["status"] == "applied" and body["noop_changes"] == ["mystery.x"] and body["warnings"]


@pytest.mark.parametrize(
    "mutation",
    [
        lambda t: t.replace("api_requests_per_minute = 500", 'api_requests_per_minute = "many"'),
        lambda t: t.replace('greeting = "hi"', "repeat = 0"),
        lambda t: t + "\n[rate_limit\n",
        lambda t: t.replace(f'api_key = "{KEY}"', 'api_key = "vault:NOT_IN_VAULT"'),
    ],
)
async def test_reload_invalid_file_is_400_and_live_config_kept(setup, mutation):
    kernel, client, path = setup
    path.write_text(mutation(path.read_text()))
    response = await client.post("/api/config/reload", headers=AUTH)
    assert response.status_code == 400
    body = await response.get_json()
    assert KEY not in body["error"]
    assert kernel.config.core.rate_limit.api_requests_per_minute == 500
    assert kernel.config.section("greeter").repeat == 1
    assert (await client.get("/api/status", headers=AUTH)).status_code == 200  # old key still works
    items, _ = await kernel.audit.recent(3)
    assert items[0]["action"] == "ConfigChange" and items[0]["outcome"] == "failed"


async def test_config_routes_are_served_under_v1(setup):
    _, client, _ = setup
    response = await client.post("/api/v1/config/set", json={"path": "log_level", "value": "warning"}, headers=AUTH)
    assert response.status_code == 200
    logging.getLogger().setLevel(logging.WARNING)  # leave the root logger as the test found it

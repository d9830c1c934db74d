"""``GET /api/security``: every active system with its real configuration, and plugin systems
contributed through the ``security_checks`` hook only while the plugin is installed and running."""

from __future__ import annotations

import librefang
from librefang.app import build_app
from librefang.routing import Router
from librefang.testing import make_client

KEY = "security-status-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CORE_SYSTEMS = {"authentication", "cors", "rate_limiter", "audit_chain", "security_headers", "request_limits",
                "idempotency", "log_redaction", "secrets_vault"}


class SandboxPlugin:
    """A plugin with a security system of its own (async check) and an idempotent route."""

    def __init__(self, timeout: int = 30) -> None:
        self.timeout = timeout

    @librefang.hookimpl
    def security_checks(self, register):
        async def sandbox(kernel):
            return {"kind": "subprocess", "timeout_secs": self.timeout}

        register("sandbox", sandbox)

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("sandboxtest")

        @router.post("/api/sandboxtest/runs", cost=1, idempotent=True)
        async def create_run():
            return {"ok": True}

        register(router)


class OddChecksPlugin:
    @librefang.hookimpl
    def security_checks(self, register):
        def broken(kernel):
            raise RuntimeError("secret-value-in-message-123")

        register("broken_check", broken)
        register("switched_off", lambda kernel: {"active": False, "reason": "disabled in config"})
        register("not_installed", lambda kernel: None)


class FailingStartPlugin:
    @librefang.hookimpl
    def security_checks(self, register):
        register("ssrf_guard", lambda kernel: {"blocked_ranges": 7})

    @librefang.hookimpl
    def startup(self, kernel):
        raise RuntimeError("no")


async def status(make_kernel, config: str | None = None, plugins=None, headers=None):
    kernel = await make_kernel(config=config, plugins=plugins or {}, load_entry_points=False)
    client = make_client(build_app(kernel))
    response = await client.get("/api/security", headers=headers)
    assert response.status_code == 200
    body = await response.get_json()
    return kernel, client, body, {s["name"]: s for s in body["systems"]}


async def test_needs_auth_when_a_key_is_configured(make_kernel):
    kernel = await make_kernel(config=f'api_key = "{KEY}"\n', plugins={}, load_entry_points=False)
    client = make_client(build_app(kernel))
    response = await client.get("/api/security")
    assert response.status_code == 401
    assert (await client.get("/api/security", headers=AUTH)).status_code == 200


async def test_core_systems_report_their_real_configuration(make_kernel):
    config = (
        f'api_key = "{KEY}"\ncors_origin = ["https://app.example.com"]\nmax_request_body_bytes = 65536\n'
        "[rate_limit]\napi_requests_per_minute = 123\n[audit]\nretention_days = 7\n"
    )
    kernel, client, body, systems = await status(make_kernel, config, headers=AUTH)
    assert CORE_SYSTEMS <= set(systems)
    assert body["count"] == len(body["systems"]) and body["active"] == sum(s["active"] for s in body["systems"])
    assert all(systems[name]["plugin"] == "core" and systems[name]["active"] for name in CORE_SYSTEMS)

    auth = systems["authentication"]["config"]
    assert auth["mode"] == "api_key" and auth["key_source"] == "config:plaintext"
    assert auth["query_string_tokens"] is False
    assert "GET /api/health" in auth["public_routes"] and "GET /api/security" not in auth["public_routes"]
    assert "https://app.example.com" in systems["cors"]["config"]["allowed_origins"]
    assert systems["cors"]["config"]["wildcard"] is False
    assert systems["rate_limiter"]["config"]["api_requests_per_minute"] == 123
    assert systems["request_limits"]["config"]["max_request_body_bytes"] == 65536
    assert systems["request_limits"]["config"]["max_json_depth"] == 32

    audit = systems["audit_chain"]["config"]
    assert audit["retention_days"] == 7 and audit["anchor_present"] is True
    assert audit["entries"] == kernel.audit.length and audit["tip_hash"] == kernel.audit.tip_hash
    assert audit["last_verify"] is None
    verified = await (await client.get("/api/audit/verify", headers=AUTH)).get_json()
    _, _, _, systems = await status_again(client)
    assert systems["audit_chain"]["config"]["last_verify"]["valid"] is verified["valid"] is True

    # The headers it lists are the headers responses carry.
    response = await client.get("/api/health")
    for name, value in systems["security_headers"]["config"]["headers"].items():
        assert response.headers[name] == value
    # The key itself appears nowhere.
    assert KEY not in (await (await client.get("/api/security", headers=AUTH)).get_data(as_text=True))


async def status_again(client):
    response = await client.get("/api/security", headers=AUTH)
    body = await response.get_json()
    return None, client, body, {s["name"]: s for s in body["systems"]}


async def test_auth_modes_without_a_key(make_kernel, monkeypatch):
    _, _, _, systems = await status(make_kernel)
    assert systems["authentication"]["active"] is True
    assert systems["authentication"]["config"]["mode"] == "loopback_only"
    assert systems["authentication"]["config"]["key_source"] == "none"
    assert systems["cors"]["config"]["restricted_to_localhost"] is True
    monkeypatch.setenv("LIBREFANG_ALLOW_NO_AUTH", "1")
    _, _, _, systems = await status(make_kernel)
    assert systems["authentication"]["active"] is False  # open to everyone: reported, not hidden
    assert systems["authentication"]["config"]["mode"] == "open"


async def test_key_references_are_named_not_resolved(make_kernel, librefang_home):
    from librefang.vault import Vault

    Vault(librefang_home).set("master", KEY)
    _, client, _, systems = await status(make_kernel, 'api_key = "vault:master"\n', headers=AUTH)
    assert systems["authentication"]["config"]["key_source"] == "vault:master"
    assert systems["secrets_vault"]["config"]["file_present"] is True
    assert systems["secrets_vault"]["config"]["key_source"] == "env:LIBREFANG_VAULT_KEY"
    assert systems["log_redaction"]["config"]["known_secret_values"] >= 1
    assert KEY not in (await (await client.get("/api/security", headers=AUTH)).get_data(as_text=True))


async def test_a_plugin_adds_its_system_only_when_installed(make_kernel):
    _, _, _, without = await status(make_kernel)
    assert "sandbox" not in without
    _, _, _, systems = await status(make_kernel, plugins={"sandboxtest": SandboxPlugin(timeout=42)})
    assert systems["sandbox"] == {"name": "sandbox", "plugin": "sandboxtest", "active": True,
                                  "config": {"kind": "subprocess", "timeout_secs": 42}, "error": None}
    assert systems["idempotency"]["config"]["routes"] == ["POST /api/sandboxtest/runs"]


async def test_a_plugin_that_failed_to_start_reports_nothing(make_kernel):
    _, _, _, systems = await status(make_kernel, plugins={"ssrf": FailingStartPlugin()})
    assert "ssrf_guard" not in systems


async def test_failing_switched_off_and_absent_checks(make_kernel):
    _, client, _, systems = await status(make_kernel, plugins={"odd": OddChecksPlugin()})
    assert systems["broken_check"]["active"] is False
    assert systems["broken_check"]["error"] == "RuntimeError"
    assert systems["switched_off"]["active"] is False
    assert systems["switched_off"]["config"] == {"reason": "disabled in config"}
    assert "not_installed" not in systems
    text = await (await client.get("/api/security")).get_data(as_text=True)
    assert "secret-value-in-message-123" not in text


async def test_security_status_is_in_openapi(make_kernel):
    kernel = await make_kernel(plugins={}, load_entry_points=False)
    document = await (await make_client(build_app(kernel)).get("/api/openapi.json")).get_json()
    operation = document["paths"]["/api/security"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/SecurityStatus"}
    assert {"systems", "count", "active"} <= set(document["components"]["schemas"]["SecurityStatus"]["properties"])

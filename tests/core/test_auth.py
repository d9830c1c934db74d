"""Authentication over HTTP: key forms, accepted credential places, the public list, no-key mode,
CORS per auth mode, WebSocket sub-protocol auth, and bounded auditing of failures."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import librefang
import pytest
from librefang.app import build_app
from librefang.auth import NO_KEY_MESSAGE, hash_key
from librefang.routing import Router
from librefang.testing import free_port, make_client
from quart import websocket
from quart.testing import WebsocketResponseError

KEY = "lf-test-key-0123456789abcdef"
REMOTE = {"client": ("203.0.113.5", 1234)}
REMOTE_2 = {"client": ("198.51.100.7", 4321)}


class WsPlugin:
    """A test plugin with a WebSocket route, a public route and a private route."""

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("authtest")

        @router.websocket("/api/authtest/ws")
        async def echo_ws():
            message = await websocket.receive()
            await websocket.send(f"echo:{message}")

        @router.get("/api/authtest/open", public=True, cost=1)
        async def authtest_open():
            return {"open": True}

        @router.get("/api/authtest/closed")
        async def authtest_closed():
            return {"closed": True}

        register(router)


async def build(make_kernel, config: str | None = None, plugins=None):
    kernel = await make_kernel(config=config, plugins=plugins or {}, load_entry_points=False)
    return kernel, make_client(build_app(kernel))


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- key forms ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "configured",
    [KEY, hash_key(KEY), "$sha256$" + hashlib.sha256(KEY.encode()).hexdigest().upper()],
    ids=["plaintext", "sha256", "sha256-uppercase-hex"],
)
async def test_configured_key_forms_accept_only_the_key(make_kernel, configured):
    _, client = await build(make_kernel, f'api_key = "{configured}"\n')
    ok = await client.get("/api/status", headers=bearer(), scope_base=REMOTE)
    assert ok.status_code == 200
    wrong = await client.get("/api/status", headers=bearer(KEY + "x"), scope_base=REMOTE)
    assert wrong.status_code == 401
    assert (await wrong.get_json())["code"] == "invalid_credential"
    # The hash itself is not a credential.
    hashed = await client.get("/api/status", headers=bearer(hash_key(KEY)), scope_base=REMOTE)
    assert hashed.status_code == 401


async def test_env_reference(make_kernel, monkeypatch):
    monkeypatch.setenv("MY_DAEMON_KEY", KEY)
    _, client = await build(make_kernel, 'api_key = "env:MY_DAEMON_KEY"\n')
    assert (await client.get("/api/status", headers=bearer(), scope_base=REMOTE)).status_code == 200
    assert (await client.get("/api/status", headers=bearer("env:MY_DAEMON_KEY"), scope_base=REMOTE)).status_code == 401


async def test_vault_reference(make_kernel, librefang_home):
    from librefang.vault import Vault

    Vault(librefang_home).set("api_master", KEY)
    _, client = await build(make_kernel, 'api_key = "vault:api_master"\n')
    assert (await client.get("/api/status", headers=bearer(), scope_base=REMOTE)).status_code == 200
    assert (await client.get("/api/status", headers=bearer("vault:api_master"), scope_base=REMOTE)).status_code == 401


async def test_librefang_api_key_env_overrides_config(make_kernel, monkeypatch):
    monkeypatch.setenv("LIBREFANG_API_KEY", KEY)
    _, client = await build(make_kernel, 'api_key = "some-other-key"\n')
    assert (await client.get("/api/status", headers=bearer(), scope_base=REMOTE)).status_code == 200
    assert (await client.get("/api/status", headers=bearer("some-other-key"), scope_base=REMOTE)).status_code == 401


async def test_dangling_env_reference_does_not_open_remote_access(make_kernel):
    _, client = await build(make_kernel, 'api_key = "env:NOT_SET_ANYWHERE_42"\n')
    response = await client.get("/api/status", headers=bearer(""), scope_base=REMOTE)
    assert response.status_code == 401
    assert (await response.get_json())["code"] == "api_key_required"


# -- where the credential may travel -------------------------------------------------------------
async def test_bearer_and_x_api_key_accepted_query_string_never(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    assert (await client.get("/api/status", headers=bearer(), scope_base=REMOTE)).status_code == 200
    assert (await client.get("/api/status", headers={"X-API-Key": KEY}, scope_base=REMOTE)).status_code == 200
    assert (await client.get("/api/status", headers={"Authorization": f"bearer {KEY}"}, scope_base=REMOTE)).status_code == 200
    for name in ("token", "api_key", "key", "access_token"):
        response = await client.get(f"/api/status?{name}={KEY}", scope_base=REMOTE)
        assert response.status_code == 401, name
    basic = await client.get("/api/status", headers={"Authorization": f"Basic {KEY}"}, scope_base=REMOTE)
    assert basic.status_code == 401
    # The WebSocket sub-protocol header is not a credential on a plain HTTP request.
    proto = await client.get("/api/status", headers={"Sec-WebSocket-Protocol": f"bearer.{KEY}"}, scope_base=REMOTE)
    assert proto.status_code == 401


async def test_missing_credential_is_401_with_challenge_and_json(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    response = await client.get("/api/status", scope_base=REMOTE)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    body = await response.get_json()
    assert body["code"] == "missing_credential"
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Authorization: Bearer" in body["error"]
    # With a key configured even loopback needs it.
    assert (await client.get("/api/status")).status_code == 401


async def test_comparison_is_constant_time_over_fixed_length_digests(make_kernel, monkeypatch):
    """Every check goes through hmac.compare_digest with two 32-byte digests, whatever was sent."""
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for candidate in ("x", KEY[:-1], KEY, "y" * 5000):
        await client.get("/api/status", headers=bearer(candidate), scope_base=REMOTE)
    assert seen == [(32, 32)] * 4


# -- the public list -------------------------------------------------------------------------------
async def test_public_list_reachable_without_credential(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n', plugins={"authtest": WsPlugin()})
    for path in ("/api/health", "/api/version", "/api/versions", "/api/config/schema", "/api/authtest/open",
                 "/api/v1/health"):
        response = await client.get(path, scope_base=REMOTE)
        assert response.status_code == 200, path
    # The WebChat shell and its assets are public (404 here: no plugin serves them in this test).
    for path in ("/", "/static/app.js", "/webchat/index.html", "/favicon.ico"):
        response = await client.get(path, scope_base=REMOTE)
        assert response.status_code == 404, path
        assert (await response.get_json())["code"] == "not_found"
    # Public means the declared method: writing to a public asset path needs a credential.
    assert (await client.post("/static/app.js", scope_base=REMOTE)).status_code == 401
    # Everything else, including unknown routes, is 401 for an anonymous remote client.
    for path in ("/api/status", "/api/authtest/closed", "/api/nope", "/api/health/detail"):
        response = await client.get(path, scope_base=REMOTE)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_status_lists_the_public_routes(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n', plugins={"authtest": WsPlugin()})
    body = await (await client.get("/api/status", headers=bearer())).get_json()
    public = body["public_routes"]
    for entry in ("GET /api/health", "GET /api/version", "GET /api/versions", "GET /api/config/schema",
                  "GET /api/authtest/open", "ANY /", "GET /static/*", "GET /webchat/*"):
        assert entry in public
    assert "GET /api/status" not in public and "GET /api/authtest/closed" not in public


# -- no key configured ---------------------------------------------------------------------------
async def test_no_key_admits_loopback_and_refuses_remote_with_instructions(make_kernel):
    _, client = await build(make_kernel)
    assert (await client.get("/api/status")).status_code == 200
    remote = await client.get("/api/status", scope_base=REMOTE)
    assert remote.status_code == 401
    assert remote.headers["WWW-Authenticate"] == "Bearer"
    body = await remote.get_json()
    assert body["error"] == NO_KEY_MESSAGE
    assert "api_key" in body["error"] and "LIBREFANG_API_KEY" in body["error"]
    # A loopback peer relaying for someone else (a local reverse proxy) is not "local".
    proxied = await client.get("/api/status", headers={"X-Forwarded-For": "203.0.113.77"})
    assert proxied.status_code == 401
    # Public routes stay public for everyone.
    assert (await client.get("/api/health", scope_base=REMOTE)).status_code == 200


async def test_no_key_with_allow_no_auth_admits_remote(make_kernel, monkeypatch):
    monkeypatch.setenv("LIBREFANG_ALLOW_NO_AUTH", "1")
    _, client = await build(make_kernel)
    assert (await client.get("/api/status", scope_base=REMOTE)).status_code == 200


async def test_no_key_loopback_admission_refuses_hostile_browser_pages(make_kernel):
    """Without a key, a web page in the user's browser is a loopback peer too: cross-site requests
    (CSRF, WebSocket hijacking) and DNS-rebinding requests are refused; real local clients are not."""
    _, client = await build(make_kernel, plugins={"authtest": WsPlugin()})
    evil = await client.post("/api/shutdown", headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    body = await evil.get_json()
    assert body["code"] == "cross_origin_refused" and "evil.example" in body["error"]
    rebound = await client.get("/api/status", headers={"Host": "attacker.example:4545"})
    assert rebound.status_code == 403 and "DNS rebinding" in (await rebound.get_json())["error"]
    with pytest.raises(WebsocketResponseError) as info:
        async with client.websocket("/api/authtest/ws", headers={"Origin": "https://evil.example"}) as ws:
            await ws.send("x")
            await ws.receive()
    assert info.value.response.status_code == 403
    # The daemon's own origin, localhost hosts, and clients that send no Origin are fine.
    assert (await client.get("/api/status", headers={"Origin": "http://localhost:4545"})).status_code == 200
    for host in ("localhost:4545", "127.0.0.1:4545", "[::1]:4545", "localhost"):
        assert (await client.get("/api/status", headers={"Host": host})).status_code == 200, host
    async with client.websocket("/api/authtest/ws") as ws:
        await ws.send("y")
        assert await ws.receive() == "echo:y"
    # Public routes are not affected (nothing to protect, and monitors may live anywhere).
    assert (await client.get("/api/health", headers={"Origin": "https://evil.example"})).status_code == 200


async def test_allow_no_auth_still_refuses_cross_site_requests(make_kernel, monkeypatch):
    monkeypatch.setenv("LIBREFANG_ALLOW_NO_AUTH", "1")
    _, client = await build(make_kernel)
    refused = await client.get("/api/status", headers={"Origin": "https://evil.example"}, scope_base=REMOTE)
    assert refused.status_code == 403
    # A remote client reaching the daemon by its LAN name is fine in open mode.
    assert (await client.get("/api/status", headers={"Host": "daemon.lan:4545"}, scope_base=REMOTE)).status_code == 200


async def test_with_a_key_the_credential_is_the_protection(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    response = await client.get("/api/status", headers={**bearer(), "Host": "daemon.lan:4545"})
    assert response.status_code == 200


# -- CORS ----------------------------------------------------------------------------------------
async def cors_for(client, origin: str, headers=None) -> str | None:
    response = await client.get("/api/health", headers={"Origin": origin, **(headers or {})})
    return response.headers.get("Access-Control-Allow-Origin")


async def test_cors_without_key_is_localhost_only(make_kernel):
    _, client = await build(make_kernel, 'api_listen = "0.0.0.0:4646"\ncors_origin = ["https://app.example.com"]\n')
    assert await cors_for(client, "http://localhost:4646") == "http://localhost:4646"
    assert await cors_for(client, "http://127.0.0.1:4646") == "http://127.0.0.1:4646"
    assert await cors_for(client, "https://app.example.com") is None  # configured, but no key: refused
    assert await cors_for(client, "https://evil.example") is None
    assert await cors_for(client, "null") is None


async def test_cors_with_key_allows_listen_origin_and_cors_origin_never_wildcard(make_kernel):
    config = (f'api_key = "{KEY}"\napi_listen = "192.0.2.10:4646"\n'
              'cors_origin = ["https://app.example.com/", "*"]\n')
    _, client = await build(make_kernel, config)
    assert await cors_for(client, "http://192.0.2.10:4646") == "http://192.0.2.10:4646"
    assert await cors_for(client, "https://app.example.com") == "https://app.example.com"
    assert await cors_for(client, "https://evil.example") is None
    response = await client.get("/api/health", headers={"Origin": "https://app.example.com"})
    assert "Origin" in response.headers.get("Vary", "")
    assert response.headers["Access-Control-Expose-Headers"].startswith("x-request-id")
    # A preflight carries no credential and is answered without one.
    preflight = await client.options(
        "/api/status", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET",
                                "Access-Control-Request-Headers": "authorization"}, scope_base=REMOTE,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    evil = await client.options(
        "/api/status", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        scope_base=REMOTE,
    )
    assert "Access-Control-Allow-Origin" not in evil.headers
    for origin in ("https://evil.example", "*", "null"):
        got = await cors_for(client, origin)
        assert got != "*" and got is None


# -- WebSocket -------------------------------------------------------------------------------------
async def test_websocket_bearer_subprotocol(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n', plugins={"authtest": WsPlugin()})
    offered = [f"bearer.{KEY}"]
    async with client.websocket(
        "/api/authtest/ws", headers={"Sec-WebSocket-Protocol": ", ".join(offered)},
        scope_base={**REMOTE, "subprotocols": offered},
    ) as ws:
        await ws.send("hi")
        assert await ws.receive() == "echo:hi"


async def raw_ws_handshake(app, offered: list[str]) -> list[dict]:
    """Drive the ASGI websocket protocol by hand to see exactly what the server sends."""
    import asyncio

    inbox: asyncio.Queue = asyncio.Queue()
    sent: list[dict] = []
    await inbox.put({"type": "websocket.connect"})

    async def send(message):
        sent.append(message)
        if message["type"] == "websocket.accept":
            await inbox.put({"type": "websocket.receive", "text": "ping"})
        elif message["type"] == "websocket.send":
            await inbox.put({"type": "websocket.disconnect", "code": 1000})

    scope = {
        "type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "scheme": "ws", "path": "/api/authtest/ws", "raw_path": b"/api/authtest/ws", "query_string": b"",
        "root_path": "", "client": REMOTE["client"], "server": ("127.0.0.1", 4545), "subprotocols": offered,
        "headers": [(b"host", b"localhost:4545"), (b"sec-websocket-protocol", ", ".join(offered).encode())],
        "extensions": {"websocket.http.response": {}},
    }
    await asyncio.wait_for(app(scope, inbox.get, send), 5)
    return sent


async def test_websocket_accept_selects_an_offered_subprotocol(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n', plugins={"authtest": WsPlugin()})
    sent = await raw_ws_handshake(client.app, ["librefang.v1", f"bearer.{KEY}"])
    accept = next(m for m in sent if m["type"] == "websocket.accept")
    assert accept["subprotocol"] == "librefang.v1"  # the credential is not echoed when avoidable
    assert any(m.get("text") == "echo:ping" for m in sent)
    sent = await raw_ws_handshake(client.app, [f"bearer.{KEY}"])
    assert next(m for m in sent if m["type"] == "websocket.accept")["subprotocol"] == f"bearer.{KEY}"
    refused = await raw_ws_handshake(client.app, ["bearer.not-the-key"])
    assert not any(m["type"] == "websocket.accept" for m in refused)
    start = next(m for m in refused if m["type"] == "websocket.http.response.start")
    assert start["status"] == 401


async def test_websocket_header_credential_and_refusals(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n', plugins={"authtest": WsPlugin()})
    async with client.websocket("/api/authtest/ws", headers=bearer(), scope_base=REMOTE) as ws:
        await ws.send("x")
        assert await ws.receive() == "echo:x"
    for kwargs in (
        {"scope_base": REMOTE},
        {"scope_base": {**REMOTE, "subprotocols": ["bearer.wrong"]}},
        {"scope_base": REMOTE, "query_string": {"token": KEY}},
    ):
        with pytest.raises(WebsocketResponseError) as info:
            async with client.websocket("/api/authtest/ws", **kwargs) as ws:
                await ws.send("x")
                await ws.receive()
        response = info.value.response
        assert response.status_code == 401
        assert response.headers["x-request-id"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert json.loads(await response.get_data())["code"] in {"missing_credential", "invalid_credential"}


# -- audit of failures --------------------------------------------------------------------------------
async def test_auth_failures_are_audited_and_coalesced(make_kernel):
    kernel, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    audit = kernel.edge.auth_audit
    for _ in range(40):
        await client.get("/api/status", headers=bearer("wrong"), scope_base=REMOTE)
    for _ in range(5):
        await client.get("/api/audit/recent", scope_base=REMOTE_2)
    assert audit.failures_seen == 45
    assert await audit.flush() == 2  # one entry per client, however many failures
    response = await client.get("/api/audit/recent?n=10", headers=bearer())
    entries = [e for e in (await response.get_json())["items"] if e["action"] == "AuthAttempt"]
    by_actor = {e["actor"]: e for e in entries}
    assert set(by_actor) == {"203.0.113.5", "198.51.100.7"}
    first = json.loads(by_actor["203.0.113.5"]["detail"])
    assert first["failures"] == 40 and first["codes"] == {"invalid_credential": 40}
    assert first["paths"] == {"/api/status": 40}
    assert by_actor["203.0.113.5"]["outcome"] == "denied"
    second = json.loads(by_actor["198.51.100.7"]["detail"])
    assert second["failures"] == 5 and second["codes"] == {"missing_credential": 5}
    assert KEY not in response.get_data(as_text=True).__repr__()
    verify = await (await client.get("/api/audit/verify", headers=bearer())).get_json()
    assert verify["valid"] is True


async def test_auth_failure_flood_from_many_addresses_is_bounded(make_kernel):
    kernel, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    audit = kernel.edge.auth_audit
    audit.max_clients = 10
    before = kernel.audit.length
    for i in range(60):
        await client.get("/api/status", scope_base={"client": (f"203.0.113.{i}", 1000)})
    assert await audit.flush() == 11  # ten clients tracked, everything else in one overflow entry
    assert kernel.audit.length - before == 11
    items = (await (await client.get("/api/audit/recent?n=20", headers=bearer())).get_json())["items"]
    overflow = next(e for e in items if e["actor"] == "*other-clients*")
    assert json.loads(overflow["detail"])["failures"] == 50
    assert kernel.edge.metrics.auth_failures == 60


async def test_auth_audit_flushes_after_the_window_by_itself(make_kernel):
    import asyncio

    kernel, client = await build(make_kernel, f'api_key = "{KEY}"\n')
    window = kernel.edge.auth_audit.window = 0.2
    before = kernel.audit.length
    started = time.monotonic()
    for _ in range(20):
        await client.get("/api/status", scope_base=REMOTE)
    elapsed = time.monotonic() - started

    async def written() -> list[dict]:
        items, _ = await kernel.audit.recent(100)
        return [e for e in items if e["seq"] > before and e["action"] == "AuthAttempt"]

    entries: list[dict] = []
    for _ in range(250):  # nobody calls flush: the window's timer must write the entries by itself
        entries = await written()
        if sum(json.loads(e["detail"])["failures"] for e in entries) >= 20:
            break
        await asyncio.sleep(0.02)
    assert sum(json.loads(e["detail"])["failures"] for e in entries) == 20
    # coalesced: one entry per elapsed window at most, not one per request
    assert 1 <= len(entries) <= int(elapsed / window) + 2 < 20


# -- start warning (cli) ---------------------------------------------------------------------------
def test_start_warns_on_non_loopback_bind_without_key(librefang_home):
    env = {k: v for k, v in os.environ.items() if k not in {"LIBREFANG_API_KEY", "LIBREFANG_ALLOW_NO_AUTH"}}
    env["LIBREFANG_LOAD_PLUGINS"] = ""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "librefang", "start", "--foreground", "--host", "0.0.0.0", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
            if "listening on" in line.lower() and "WARNING" in seen:
                break
        assert "WARNING" in seen and "api_key" in seen
    finally:
        proc.terminate()
        proc.wait(10)

"""Every response: request ids, security headers (errors and streams too), JSON errors for every
status, and the body guards (size with and without Content-Length, depth, syntax, content type)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import httpx
import librefang
import pytest
from librefang.app import build_app
from librefang.edge import SECURITY_HEADERS
from librefang.jsonbody import MAX_JSON_DEPTH
from librefang.routing import Router
from librefang.testing import make_client, start_live_server
from pydantic import BaseModel
from quart import Response

REMOTE = {"client": ("203.0.113.5", 1234)}
LEAKY_SECRET = "sk-live-0123456789abcdefSECRET"


class EchoBody(BaseModel):
    data: Any = None


class EdgePlugin:
    """Routes that fail, stream, and take a JSON body."""

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("edgetest")

        @router.get("/api/edgetest/boom")
        async def boom():
            raise RuntimeError(f"database password is {LEAKY_SECRET}")

        @router.post("/api/edgetest/echo", body=EchoBody)
        async def echo(body: EchoBody):
            return {"data": body.data}

        @router.post("/api/edgetest/raw")
        async def raw():
            from quart import request

            return {"received": len(await request.get_data())}

        @router.get("/api/edgetest/stream")
        async def stream():
            async def events():
                for i in range(3):
                    yield f"data: {i}\n\n".encode()

            response = Response(events(), mimetype="text/event-stream")
            response.headers["Cache-Control"] = "no-cache"  # replaced by the edge, not duplicated
            response.timeout = None
            return response

        register(router)


async def build(make_kernel, config: str | None = None):
    kernel = await make_kernel(config=config, plugins={"edgetest": EdgePlugin()}, load_entry_points=False)
    return kernel, make_client(build_app(kernel))


def assert_security_headers(response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "max-age=63072000" in response.headers["Strict-Transport-Security"]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    rid = response.headers["x-request-id"]
    assert uuid.UUID(rid).version == 4


async def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = await response.get_json()
    assert set(body) >= {"error", "code", "request_id"}
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["code"] == code
    assert_security_headers(response)
    return body


# -- request ids ---------------------------------------------------------------------------------
async def test_request_id_fresh_uuid4_and_client_id_not_reused(make_kernel):
    _, client = await build(make_kernel)
    seen = set()
    for _ in range(5):
        response = await client.get("/api/health", headers={"X-Request-Id": "client-chosen-id"})
        rid = response.headers["x-request-id"]
        assert rid != "client-chosen-id"
        assert uuid.UUID(rid).version == 4
        seen.add(rid)
    assert len(seen) == 5


# -- headers on every kind of response -----------------------------------------------------------
async def test_security_headers_on_success_errors_preflight_and_stream(make_kernel):
    _, client = await build(make_kernel, 'api_key = "k-0123456789"\n')
    assert_security_headers(await client.get("/api/health"))
    assert_security_headers(await client.get("/api/status", scope_base=REMOTE))  # 401
    assert_security_headers(await client.get("/api/nowhere"))  # 401 for loopback too (key set)
    assert_security_headers(await client.options(
        "/api/status", headers={"Origin": "http://localhost:4545", "Access-Control-Request-Method": "GET"}))
    stream = await client.get("/api/edgetest/stream", headers={"Authorization": "Bearer k-0123456789"})
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    assert_security_headers(stream)
    assert stream.headers.getlist("Cache-Control") == [SECURITY_HEADERS["Cache-Control"]]
    assert len(stream.headers.getlist("x-request-id")) == 1
    assert await stream.get_data(as_text=True) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_metrics_count_requests_and_in_flight(make_kernel):
    _, client = await build(make_kernel)
    for _ in range(3):
        await client.get("/api/health")
    await client.get("/api/nowhere")
    text = await (await client.get("/api/metrics")).get_data(as_text=True)
    assert 'librefang_http_requests_total{method="GET",route="/api/health",status="200"} 3.0' in text
    assert 'librefang_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert "librefang_http_requests_in_flight 1.0" in text  # the scrape itself


# -- JSON errors for every status ------------------------------------------------------------------
async def test_404_and_405_are_json(make_kernel):
    _, client = await build(make_kernel)
    body = await assert_error(await client.get("/api/does-not-exist"), 404, "not_found")
    assert "/api/does-not-exist" in body["error"]
    await assert_error(await client.get("/api/v1/does-not-exist"), 404, "not_found")
    response = await client.delete("/api/health")
    body = await assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
    assert "DELETE" in body["error"]


async def test_500_hides_the_error_and_logs_traceback_with_request_id(make_kernel, caplog):
    _, client = await build(make_kernel)
    with caplog.at_level(logging.ERROR, logger="librefang.edge"):
        response = await client.get("/api/edgetest/boom")
    body = await assert_error(response, 500, "internal_error")
    assert body["error"] == "Internal server error"
    raw = await response.get_data(as_text=True)
    for leak in (LEAKY_SECRET, "Traceback", "RuntimeError", "database password", "edge.py"):
        assert leak not in raw
    rid = response.headers["x-request-id"]
    records = [r.getMessage() for r in caplog.records if r.name == "librefang.edge" and rid in r.getMessage()]
    assert records, "the 500 must be logged with its request id"
    logged = records[0]
    assert "Traceback (most recent call last)" in logged and "RuntimeError: database password is" in logged
    assert "raise RuntimeError" in logged  # the failing line is there for whoever debugs it
    assert LEAKY_SECRET not in logged  # but not the secret the exception message carried


async def test_500_log_scrubs_the_api_key_and_vault_values(make_kernel, librefang_home, caplog):
    from librefang.vault import Vault

    Vault(librefang_home).set("bot_token", "vaulted-value-998877")

    class Leaky:
        @librefang.hookimpl
        def register_routes(self, register):
            router = Router("leaky")

            @router.get("/api/leaky")
            async def leaky():
                raise ValueError("key=plain-master-key-42 token vaulted-value-998877")

            register(router)

    kernel = await make_kernel(config='api_key = "plain-master-key-42"\n', plugins={"leaky": Leaky()},
                               load_entry_points=False)
    client = make_client(build_app(kernel))
    with caplog.at_level(logging.ERROR, logger="librefang.edge"):
        response = await client.get("/api/leaky", headers={"Authorization": "Bearer plain-master-key-42"})
    assert response.status_code == 500
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ValueError" in logged
    assert "plain-master-key-42" not in logged and "vaulted-value-998877" not in logged


async def test_429_is_json_with_retry_after(make_kernel):
    _, client = await build(make_kernel, "[rate_limit]\napi_requests_per_minute = 1\n")
    assert (await client.get("/api/health", scope_base=REMOTE)).status_code == 200
    response = await client.get("/api/health", scope_base=REMOTE)
    body = await assert_error(response, 429, "rate_limited")
    assert body["error"] == "Rate limit exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


# -- body guards ---------------------------------------------------------------------------------
async def test_body_over_limit_with_content_length_is_413(make_kernel):
    _, client = await build(make_kernel)
    limit = 8 * 1024 * 1024
    payload = json.dumps({"data": "x" * limit}).encode()
    response = await client.post("/api/edgetest/echo", data=payload, headers={"Content-Type": "application/json"})
    body = await assert_error(response, 413, "payload_too_large")
    assert str(limit) in body["error"]
    # At the limit it is accepted.
    fits = json.dumps({"data": "x" * (limit - 20)}).encode()
    assert len(fits) <= limit
    ok = await client.post("/api/edgetest/echo", data=fits, headers={"Content-Type": "application/json"})
    assert ok.status_code == 200


async def stream_body(client, path: str, chunks: list[bytes], content_type: str = "application/json"):
    """Send a body in chunks with no Content-Length (what chunked transfer encoding looks like in ASGI)."""
    async with client.request(
        path, method="POST", headers={"Content-Type": content_type}, scope_base={"client": ("127.0.0.1", 5)}
    ) as connection:
        for chunk in chunks:
            await connection.send(chunk)
        await connection.send_complete()
    return await connection.as_response()


async def test_chunked_body_over_limit_is_413(make_kernel):
    _, client = await build(make_kernel, "max_request_body_bytes = 4096\n")
    chunk = b" " * 1024
    response = await stream_body(client, "/api/edgetest/echo", [b'{"data": "'] + [chunk] * 5 + [b'"}'])
    await assert_error(response, 413, "payload_too_large")
    response = await stream_body(client, "/api/edgetest/raw", [chunk] * 6, "application/octet-stream")
    await assert_error(response, 413, "payload_too_large")
    ok = await stream_body(client, "/api/edgetest/echo", [b'{"data": ', b'"small"}'])
    assert ok.status_code == 200 and (await ok.get_json()) == {"data": "small"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_json_depth_limit(make_kernel):
    _, client = await build(make_kernel)
    # {"data": ...} is one level, so the array may nest MAX_JSON_DEPTH - 1 deep.
    ok = await client.post("/api/edgetest/echo", data=f'{{"data": {nested(MAX_JSON_DEPTH - 1)}}}',
                           headers={"Content-Type": "application/json"})
    assert ok.status_code == 200
    deep = await client.post("/api/edgetest/echo", data=f'{{"data": {nested(MAX_JSON_DEPTH)}}}',
                             headers={"Content-Type": "application/json"})
    body = await assert_error(deep, 400, "json_too_deep")
    assert "32" in body["error"]
    # Far beyond the interpreter's recursion limit: still a clean 400.
    abyss = await client.post("/api/edgetest/echo", data=nested(200_000), headers={"Content-Type": "application/json"})
    await assert_error(abyss, 400, "json_too_deep")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b'{"data": ', "malformed JSON"),
        (b'{"data": 1,}', "line 1 column"),
        (b"{'data': 1}", "property name"),
        (b"", "empty"),
        (b'{"data": "\xff"}', "UTF-8"),
        (b'{"data": NaN}', "NaN is not a valid JSON value"),
        (b'{"data": -Infinity}', "Infinity"),
    ],
)
async def test_malformed_json_is_400_naming_the_problem(make_kernel, payload, fragment):
    _, client = await build(make_kernel)
    response = await client.post("/api/edgetest/echo", data=payload, headers={"Content-Type": "application/json"})
    body = await assert_error(response, 400, "invalid_json")
    assert fragment in body["error"]


async def test_wrong_content_type_is_415(make_kernel):
    _, client = await build(make_kernel)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = await client.post("/api/edgetest/echo", data=b'{"data": 1}', headers={"Content-Type": content_type})
        body = await assert_error(response, 415, "unsupported_media_type")
        assert "application/json" in body["error"]
    for content_type in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post("/api/edgetest/echo", data=b'{"data": 1}', headers={"Content-Type": content_type})
        assert response.status_code == 200, content_type


async def test_schema_violation_is_400_not_500(make_kernel):
    _, client = await build(make_kernel)
    response = await client.post("/api/edgetest/echo", data=b"[1, 2]", headers={"Content-Type": "application/json"})
    body = await assert_error(response, 400, "invalid_body")
    assert "body" in body["error"]


# -- over a real socket ----------------------------------------------------------------------------
def test_live_server_stream_headers_and_chunked_413(librefang_home):
    (librefang_home / "config.toml").write_text("max_request_body_bytes = 4096\n")
    server = start_live_server(librefang_home, plugins={"edgetest": EdgePlugin()}, load_entry_points=False)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http, \
                http.stream("GET", "/api/edgetest/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["x-frame-options"] == "DENY"
            assert uuid.UUID(stream.headers["x-request-id"]).version == 4
            assert "".join(stream.iter_text()) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"

        def chunks():
            yield b'{"data": "'
            for _ in range(8):
                yield b"y" * 1024
            yield b'"}'

        response = httpx.post(server.url + "/api/edgetest/echo", content=chunks(),
                              headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 413
        assert "content-length" not in {k.lower() for k in response.request.headers}
        body = response.json()
        assert body["code"] == "payload_too_large" and body["request_id"] == response.headers["x-request-id"]
        assert response.headers["x-content-type-options"] == "nosniff"
    finally:
        server.stop()


# -- per-route body limits ------------------------------------------------------------------------
class LimitsPlugin:
    """Routes declaring their own body limit: a number, a [core] config key, a callable."""

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("limits")

        async def received():
            from quart import request

            return {"received": len(await request.get_data())}

        router.post("/api/limits/small", max_body=1024)(received)
        router.post("/api/limits/upload", max_body="max_upload_size_bytes")(_named(received, "upload"))
        router.post("/api/limits/computed", max_body=lambda kernel: kernel.config.core.max_upload_size_bytes * 2)(
            _named(received, "computed"))
        router.post("/api/limits/global")(_named(received, "global_limit"))
        register(router)


def _named(fn, name):
    async def wrapper():
        return await fn()

    wrapper.__name__ = name
    return wrapper


async def post_bytes(client, path: str, size: int):
    return await client.post(path, data=b"x" * size, headers={"Content-Type": "application/octet-stream"})


async def test_route_body_limit_overrides_the_global_one_for_that_route_only(make_kernel):
    kernel = await make_kernel(config="max_request_body_bytes = 4096\nmax_upload_size_bytes = 16384\n",
                               plugins={"limits": LimitsPlugin()}, load_entry_points=False)
    client = make_client(build_app(kernel))
    assert (await post_bytes(client, "/api/limits/small", 1024)).status_code == 200
    body = await assert_error(await post_bytes(client, "/api/limits/small", 1025), 413, "payload_too_large")
    assert "1024" in body["error"]
    # Larger than the global limit, within the route's (a [core] key, or a callable of the kernel).
    ok = await post_bytes(client, "/api/limits/upload", 16384)
    assert ok.status_code == 200 and (await ok.get_json())["received"] == 16384
    await assert_error(await post_bytes(client, "/api/limits/upload", 16385), 413, "payload_too_large")
    assert (await post_bytes(client, "/api/limits/computed", 32768)).status_code == 200
    await assert_error(await post_bytes(client, "/api/limits/computed", 32769), 413, "payload_too_large")
    # Routes without a declaration keep the global limit.
    assert (await post_bytes(client, "/api/limits/global", 4096)).status_code == 200
    body = await assert_error(await post_bytes(client, "/api/limits/global", 4097), 413, "payload_too_large")
    assert "4096" in body["error"]


async def test_route_body_limit_is_enforced_while_streaming(make_kernel):
    kernel = await make_kernel(config="max_request_body_bytes = 4096\nmax_upload_size_bytes = 16384\n",
                               plugins={"limits": LimitsPlugin()}, load_entry_points=False)
    client = make_client(build_app(kernel))
    chunk = b"y" * 1024
    fits = await stream_body(client, "/api/limits/upload", [chunk] * 16, "application/octet-stream")
    assert fits.status_code == 200 and (await fits.get_json())["received"] == 16384
    body = await assert_error(await stream_body(client, "/api/limits/upload", [chunk] * 17, "application/octet-stream"),
                              413, "payload_too_large")
    assert "16384" in body["error"]
    body = await assert_error(await stream_body(client, "/api/limits/small", [chunk] * 2, "application/octet-stream"),
                              413, "payload_too_large")
    assert "1024" in body["error"]


async def test_route_body_limit_follows_a_config_reload(make_kernel, librefang_home):
    kernel = await make_kernel(config="max_upload_size_bytes = 16384\n", plugins={"limits": LimitsPlugin()},
                               load_entry_points=False)
    client = make_client(build_app(kernel))
    assert (await post_bytes(client, "/api/limits/upload", 16000)).status_code == 200
    (librefang_home / "config.toml").write_text("max_upload_size_bytes = 8192\n")
    reload = await client.post("/api/config/reload")
    assert reload.status_code == 200, await reload.get_data(as_text=True)
    await assert_error(await post_bytes(client, "/api/limits/upload", 16000), 413, "payload_too_large")


def test_route_body_limit_declarations_are_checked():
    router = Router("badlimits")
    for bad in (0, -5, True, 1.5):
        with pytest.raises(ValueError, match="max_body"):
            router.post("/api/bad", max_body=bad)


async def test_route_body_limit_naming_no_config_key_fails_the_build(make_kernel):
    class Typo:
        @librefang.hookimpl
        def register_routes(self, register):
            router = Router("typo")
            router.post("/api/typo", max_body="max_uplod_size")(_named(lambda: None, "typo"))
            register(router)

    kernel = await make_kernel(plugins={"typo": Typo()}, load_entry_points=False)
    with pytest.raises(librefang.errors.PluginError, match="max_uplod_size"):
        build_app(kernel)


# -- paths with empty segments ------------------------------------------------------------------------
async def asgi_get(app, path: str, headers: list[tuple[bytes, bytes]] = (), client=("127.0.0.1", 5)):
    """``GET path`` straight through the ASGI app, the path exactly as a server passes it (the test
    client would read ``//api/...`` as a URL with a host): (status, headers, JSON body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:4545"), *headers], "client": client, "server": ("127.0.0.1", 4545)}
    messages = []
    received = []

    async def receive():
        if received:  # the body was sent; a client that stays connected sends nothing more
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


@pytest.mark.parametrize("path", ["/api//health", "/api//agents", "/api/v1//health", "/api/health//", "//"])
async def test_double_slash_paths_get_a_json_404_not_a_redirect(make_kernel, path):
    kernel, _ = await build(make_kernel)
    status, headers, body = await asgi_get(build_app(kernel), path)
    assert status == 404 and "location" not in headers
    assert body["code"] == "not_found" and body["error"].startswith("no route for GET /")
    assert body["request_id"] == headers["x-request-id"] and headers["x-frame-options"] == "DENY"


async def test_leading_slashes_are_one_slash_for_routing_and_for_auth_alike(make_kernel):
    # Werkzeug reads "//api/x" as "/api/x"; the edge decides public/cost/auth through the same matcher.
    kernel, _ = await build(make_kernel, 'api_key = "k-0123456789"\n')
    app = build_app(kernel)
    status, _, body = await asgi_get(app, "//api/health", client=("203.0.113.5", 1234))
    assert status == 200 and body["status"] == "ok"
    status, headers, body = await asgi_get(app, "//api/status", client=("203.0.113.5", 1234))
    assert status == 401 and body["code"] == "missing_credential" and headers["www-authenticate"] == "Bearer"
    status, _, body = await asgi_get(app, "///api/status", [(b"authorization", b"Bearer k-0123456789")])
    assert status == 200 and body["status"] == "running"
    status, _, body = await asgi_get(app, "/api//status", client=("203.0.113.5", 1234))
    assert status == 401  # an interior "//" matches no route, and unknown paths need the key too
    status, _, body = await asgi_get(app, "/api//status", [(b"authorization", b"Bearer k-0123456789")])
    assert status == 404 and "//" in body["error"]


# -- what handlers see ----------------------------------------------------------------------------------
async def test_handlers_see_the_request_id_and_principal_the_edge_decided(make_kernel):
    class Who:
        @librefang.hookimpl
        def register_routes(self, register):
            router = Router("who")

            @router.get("/api/who")
            async def who():
                from quart import g

                return {"request_id": g.request_id, "principal": getattr(g, "principal", None),
                        "has": "request_id" in g, "get": g.get("principal")}

            @router.get("/api/who/public", public=True)
            async def who_public():
                from quart import g

                return {"principal": getattr(g, "principal", None)}

            register(router)

    kernel = await make_kernel(config='api_key = "k-0123456789"\n', plugins={"who": Who()}, load_entry_points=False)
    client = make_client(build_app(kernel))
    response = await client.get("/api/who", headers={"Authorization": "Bearer k-0123456789"})
    body = await response.get_json()
    assert body == {"request_id": response.headers["x-request-id"], "principal": "root", "has": True, "get": "root"}
    assert (await (await client.get("/api/who/public")).get_json()) == {"principal": None}

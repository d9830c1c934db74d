"""The edge every request passes: request id, security headers, CORS, body limits, auth,
rate limit, JSON errors and metrics. Order follows ARCHITECTURE §5.

Everything here runs in one ``before_request`` and one ``after_request`` function so the hot path
stays short (the health-throughput benchmark holds it to ≥ 0.8x a bare Quart app).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, request, websocket
from werkzeug.exceptions import HTTPException

from librefang.auth import Authenticator
from librefang.errors import ApiError, PayloadTooLarge, TooManyRequests, code_for_status
from librefang.metrics import Metrics
from librefang.netutil import ProxyTrust, has_forwarding_headers, is_loopback
from librefang.ratelimit import GcraLimiter

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

log = logging.getLogger("librefang.edge")
access_log = logging.getLogger("librefang.access")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self' ws://localhost:* ws://127.0.0.1:* wss://localhost:* wss://127.0.0.1:*; "
    "font-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "X-XSS-Protection": "1; mode=block",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cache-Control": "no-store, no-cache, must-revalidate",
    "X-API-Version": "v1",
}
# Paths that are always public and never rate limited (the WebChat page and its assets).
STATIC_PUBLIC_PREFIXES = ("/static/", "/webchat/", "/favicon.ico", "/logo.png")


class EdgeState:
    """Per-kernel edge services; the limiter survives app rebuilds (hot reload)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.metrics = Metrics(kernel)
        self.limiter: Any = None
        self.configure()

    def configure(self) -> None:
        """(Re)build from config: key, proxies, CORS origins, limiter quota."""
        core = self.kernel.config.core
        self.auth = Authenticator(self.kernel.secret(core.api_key))
        self.proxies = ProxyTrust(core.trusted_proxies)
        rl = core.rate_limit
        if (
            self.limiter is None
            or self.limiter.burst != rl.api_requests_per_minute
            or self.limiter.max_keys != rl.max_tracked_clients
        ):
            self.limiter = GcraLimiter(rl.api_requests_per_minute, max_keys=rl.max_tracked_clients)
        self.retry_after = rl.retry_after_secs
        self.max_body = core.max_request_body_bytes
        self.cors_origins = self._cors_origins()

    def _cors_origins(self) -> frozenset[str]:
        core = self.kernel.config.core
        host, port = self.kernel.config.listen()
        local = {f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}"}
        if not self.auth.enabled:
            return frozenset(local)  # no key: browsers on localhost only
        origins = set(local)
        if host not in {"0.0.0.0", "::"}:
            origins.add(f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}")
        origins.update(o.rstrip("/") for o in core.cors_origin if o.strip() and o.strip() != "*")
        return frozenset(origins)


def error_response(exc: ApiError, request_id: str | None) -> Response:
    response = Response.__new__(Response)
    Response.__init__(response, _dumps(exc.body(request_id)), status=exc.status, mimetype="application/json")
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value)


def install_edge(app: Quart, kernel: Kernel) -> None:
    """Attach the edge to a freshly built app."""
    state: EdgeState = kernel.edge
    specs = kernel.routes.by_endpoint()
    metrics = state.metrics
    security_headers = list(SECURITY_HEADERS.items())
    app.config["MAX_CONTENT_LENGTH"] = state.max_body

    def resolve_spec() -> Any:
        endpoint = request.endpoint
        return specs.get(endpoint) if endpoint else None

    async def before() -> Any:
        g.request_id = str(uuid.uuid4())
        g.started = time.perf_counter()
        metrics.in_flight.inc()
        path = request.path
        if path.startswith(STATIC_PUBLIC_PREFIXES) or path == "/":
            spec = resolve_spec()
            if spec is None or spec.public:
                return None
        length = request.content_length
        if length is not None and length > state.max_body:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {state.max_body} bytes")
        headers = request.headers
        if request.method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers:
            return _preflight(state, headers.get("origin", ""))
        spec = resolve_spec()
        peer = (request.scope.get("client") or ("",))[0] or ""
        if spec is None or not spec.public:
            try:
                g.principal = state.auth.check(headers, peer)
            except ApiError:
                metrics.auth_failures.inc()
                kernel.tasks.spawn("core", _audit_auth_failure(kernel, path, peer, g.request_id))
                raise
        if is_loopback(peer) and not has_forwarding_headers(headers):
            return None  # local clients (the dashboard, the CLI) are not rate limited
        client = state.proxies.client_ip(peer, headers)
        cost = spec.cost if spec is not None else 1
        allowed, _wait = state.limiter.take(client, cost)
        if not allowed:
            metrics.rate_limited.inc()
            raise TooManyRequests(
                "Rate limit exceeded", code="rate_limited", headers={"Retry-After": str(state.retry_after)}
            )
        return None

    async def after(response: Response) -> Response:
        request_id = getattr(g, "request_id", None) or str(uuid.uuid4())
        headers = response.headers
        headers["x-request-id"] = request_id
        for name, value in security_headers:
            headers[name] = value
        origin = request.headers.get("origin")
        if origin and origin in state.cors_origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
            headers["Access-Control-Expose-Headers"] = "x-request-id, Retry-After"
        started = getattr(g, "started", None)
        if started is not None:
            metrics.in_flight.dec()
            rule = request.url_rule
            route = rule.rule if rule is not None else "<unmatched>"
            metrics.observe(request.method, route, response.status_code, time.perf_counter() - started)
        status = response.status_code
        if status >= 500:
            access_log.error("%s %s %s rid=%s", request.method, request.path, status, request_id)
        elif status >= 400:
            access_log.warning("%s %s %s rid=%s", request.method, request.path, status, request_id)
        return response

    async def before_ws() -> Any:
        g.request_id = str(uuid.uuid4())
        endpoint = websocket.endpoint
        spec = specs.get(endpoint) if endpoint else None
        peer = (websocket.scope.get("client") or ("",))[0] or ""
        if spec is None or not spec.public:
            try:
                g.principal = state.auth.check(websocket.headers, peer)
            except ApiError as exc:
                metrics.auth_failures.inc()
                return error_response(exc, g.request_id)
        if not (is_loopback(peer) and not has_forwarding_headers(websocket.headers)):
            allowed, _ = state.limiter.take(state.proxies.client_ip(peer, websocket.headers), spec.cost if spec else 1)
            if not allowed:
                metrics.rate_limited.inc()
                exc = TooManyRequests("Rate limit exceeded", headers={"Retry-After": str(state.retry_after)})
                return error_response(exc, g.request_id)
        return None

    async def handle_api_error(exc: ApiError) -> Response:
        return error_response(exc, getattr(g, "request_id", None))

    async def handle_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 404:
            message = f"no route for {request.method} {request.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed for {request.path}"
        elif status == 413:
            message = f"request body exceeds the limit of {state.max_body} bytes"
        api = ApiError(message, status=status, code=code_for_status(status))
        response = error_response(api, getattr(g, "request_id", None))
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    async def handle_unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", None)
        log.error("unhandled error rid=%s %s %s", request_id, request.method, request.path, exc_info=exc)
        return error_response(ApiError("Internal server error", status=500, code="internal_error"), request_id)

    app.before_request(before)
    app.after_request(after)
    app.before_websocket(before_ws)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)


def _preflight(state: EdgeState, origin: str) -> Response:
    response = Response("", status=204)
    if origin in state.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, X-API-Key, Idempotency-Key, X-Request-Id"
        )
        response.headers["Access-Control-Max-Age"] = "600"
    return response


async def _audit_auth_failure(kernel: Kernel, path: str, peer: str, request_id: str) -> None:
    await kernel.audit.record(
        "AuthAttempt", actor=peer or "unknown", target=path, outcome="denied", request_id=request_id
    )

"""The edge every request passes: request id, CORS preflight, body limit, rate limit, auth, JSON
errors, security headers and metrics.

Order: request id → CORS preflight → public shell/assets shortcut → body-size limit → rate limit →
auth → route → JSON errors → security headers, CORS and metrics on the way out. The limiter runs
before auth on purpose: a client guessing keys pays for every guess, and a 401 flood stops at 429
before it costs an audit tally. Loopback peers without forwarding headers skip the limiter (the
dashboard and CLI poll).

Everything runs in one ``before_request`` and one ``after_request`` function and reads its
settings from :class:`EdgeState` attributes, so the hot path (``GET /api/health`` from loopback:
a uuid, two dict lookups, a cached loopback check, eight header sets) stays short; a benchmark
holds it to ≥ 0.8x a bare Quart app.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, has_request_context, request, websocket
from werkzeug.exceptions import HTTPException

from librefang.auth import (
    ALWAYS_PUBLIC_PATHS,
    PUBLIC_ASSET_PREFIXES,
    WS_BEARER_PREFIX,
    Authenticator,
    AuthFailureAudit,
    browser_guard,
    choose_subprotocol,
    is_static_public,
)
from librefang.errors import (
    ApiError,
    ConfigError,
    Forbidden,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    code_for_status,
)
from librefang.metrics import Metrics
from librefang.netutil import ProxyTrust, has_forwarding_headers, is_loopback
from librefang.ratelimit import DEFAULT_COST, GcraLimiter, RateLimiter

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
NO_KEY_PRINCIPALS = frozenset({"local", "anonymous"})  # admitted without a credential (no api_key)
EDGE_HEADER_NAMES = frozenset({"x-request-id", *(name.lower() for name in SECURITY_HEADERS)})
EDGE_HEADER_BYTES = frozenset(name.encode() for name in EDGE_HEADER_NAMES)
SECURITY_HEADER_BYTES = tuple((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items())
REQUEST_ID_KEY = "librefang.request_id"  # ASGI scope key: the id the ASGI edge gave this request
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key, Idempotency-Key, X-Request-Id, Accept"
CORS_EXPOSE_HEADERS = "x-request-id, Retry-After"


class EdgeState:
    """Per-kernel edge services. The limiter and the auth-failure tallies survive app rebuilds (hot
    reload) and config reloads; :meth:`configure` re-reads everything else from the config."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.metrics = Metrics(kernel)
        # A plain counter read at scrape time: a prometheus Gauge takes a lock on every inc/dec.
        self.in_flight = 0
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.auth_audit = AuthFailureAudit(kernel)
        self.limiter: Any = None
        self._custom_limiter = False
        self.configure()

    def configure(self) -> None:
        """(Re)build from config: key, proxies, CORS origins, limiter quota, body limit."""
        core = self.kernel.config.core
        resolved = self.kernel.secret(core.api_key) if core.api_key else ""
        if core.api_key.strip() and not resolved.strip():
            # A dangling env:/vault: reference must not look like "auth on": say so loudly.
            log.warning("api_key %r resolved to an empty value: only loopback clients are admitted",
                        core.api_key if core.api_key.startswith(("env:", "vault:")) else "<set>")
        # Kept only to scrub it from logged tracebacks; requests are checked against a digest.
        self.secret_value = resolved.strip() if len(resolved.strip()) >= 6 and not resolved.startswith("$sha256$") else ""
        try:
            self.auth = Authenticator(resolved)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.proxies = ProxyTrust(core.trusted_proxies)
        rl = core.rate_limit
        if not self._custom_limiter and (
            self.limiter is None
            or self.limiter.per_minute != rl.api_requests_per_minute
            or self.limiter.max_keys != rl.max_tracked_clients
        ):
            self.limiter = GcraLimiter(rl.api_requests_per_minute, max_keys=rl.max_tracked_clients)
        self.retry_after = rl.retry_after_secs
        self.max_body = core.max_request_body_bytes
        self.cors_origins = self._cors_origins()

    def use_limiter(self, limiter: RateLimiter) -> None:
        """Replace the in-process limiter (e.g. by one backed by a store shared between processes)."""
        if not isinstance(limiter, RateLimiter):
            raise TypeError("the limiter must implement librefang.ratelimit.RateLimiter")
        self.limiter = limiter
        self._custom_limiter = True

    def _cors_origins(self) -> frozenset[str]:
        core = self.kernel.config.core
        host, port = self.kernel.config.listen()
        origins = {f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}"}
        if not self.auth.enabled:
            return frozenset(origins)  # no key: only browsers on this machine
        listen = self.kernel.listen_url or ""
        if listen:
            origins.add(listen.rstrip("/"))
        if host not in {"0.0.0.0", "::", ""}:
            origins.add(f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}")
        # cors_origin is explicit configuration; "*" (or "null") would defeat the point and is dropped.
        origins.update(o.strip().rstrip("/") for o in core.cors_origin if o.strip() not in {"", "*", "null"})
        return frozenset(origins)


def error_response(exc: ApiError, request_id: str | None) -> Response:
    """The JSON error response for ``exc`` (headers such as Retry-After included)."""
    response = Response(json.dumps(exc.body(request_id)), status=exc.status, mimetype="application/json")
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def install_edge(app: Quart, kernel: Kernel) -> None:
    """Attach the edge to a freshly built app."""
    state: EdgeState = kernel.edge
    specs = kernel.routes.by_endpoint()
    metrics = state.metrics
    security_headers = list(SECURITY_HEADERS.items())
    app.config["MAX_CONTENT_LENGTH"] = state.max_body

    async def before() -> Any:
        # Proxies resolved once: every attribute read through quart's LocalProxy costs a lookup.
        req = request._get_current_object()
        ctx = g._get_current_object()
        request_id = ctx.request_id = req.scope.get(REQUEST_ID_KEY) or str(uuid.uuid4())
        ctx.started = time.perf_counter()
        state.in_flight += 1
        headers = req.headers
        method = req.method
        if method == "OPTIONS" and "access-control-request-method" in headers and "origin" in headers:
            return _preflight(state, headers.get("origin", ""))
        endpoint = req.endpoint
        spec = specs.get(endpoint) if endpoint else None
        path = req.path
        if spec is not None:
            public, cost = spec.public, spec.cost
        else:
            public, cost = is_static_public(method, path), DEFAULT_COST
        if public and (path in ALWAYS_PUBLIC_PATHS or path.startswith(PUBLIC_ASSET_PREFIXES)):
            return None  # the WebChat shell and its assets: no limiter, no credential
        length = req.content_length
        if length is not None and length > state.max_body:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {state.max_body} bytes",
                code="payload_too_large",
            )
        peer = (req.scope.get("client") or ("",))[0] or ""
        local = is_loopback(peer) and not has_forwarding_headers(headers)
        if not local:
            await _charge(state, state.proxies.client_ip(peer, headers), cost)
        if not public:
            try:
                principal = ctx.principal = state.auth.check(headers, peer)
            except Unauthorized as exc:
                metrics.auth_failures.inc()
                client = peer if local else state.proxies.client_ip(peer, headers)
                state.auth_audit.note(client or "unknown", path, exc.code, request_id)
                raise
            if principal in NO_KEY_PRINCIPALS:
                refusal = browser_guard(headers, state.cors_origins, local=principal == "local")
                if refusal is not None:
                    raise Forbidden(refusal, code="cross_origin_refused")
        return None

    async def after(response: Response) -> Response:
        req = request._get_current_object()
        ctx = g._get_current_object()
        request_id = getattr(ctx, "request_id", None)
        headers = response.headers  # x-request-id and security headers are stamped by the ASGI edge (app.py)
        origin = req.headers.get("origin")
        if origin and origin in state.cors_origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers.add("Vary", "Origin")
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        started = getattr(ctx, "started", None)
        status = response.status_code
        if started is not None:
            state.in_flight -= 1
            rule = req.url_rule
            route = rule.rule if rule is not None else "<unmatched>"
            metrics.observe(req.method, route, status, time.perf_counter() - started)
        if status >= 400:
            if status != 413 and req.method in BODY_METHODS:
                await _drain_body(req)
            log_at = access_log.error if status >= 500 else access_log.warning
            log_at("%s %s %s rid=%s", req.method, req.path, status, request_id)
        return response

    async def before_ws() -> Any:
        request_id = g.request_id = str(uuid.uuid4())
        endpoint = websocket.endpoint
        spec = specs.get(endpoint) if endpoint else None
        headers = websocket.headers
        peer = (websocket.scope.get("client") or ("",))[0] or ""
        offered = websocket.requested_subprotocols
        local = is_loopback(peer) and not has_forwarding_headers(headers)
        try:
            if not local:
                await _charge(state, state.proxies.client_ip(peer, headers), spec.cost if spec else DEFAULT_COST)
            if spec is None or not spec.public:
                try:
                    principal = g.principal = state.auth.check(headers, peer, offered)
                except Unauthorized as exc:
                    metrics.auth_failures.inc()
                    client = peer if local else state.proxies.client_ip(peer, headers)
                    state.auth_audit.note(client or "unknown", websocket.path, exc.code, request_id)
                    raise
                if principal in NO_KEY_PRINCIPALS:  # cross-site WebSocket hijacking, DNS rebinding
                    refusal = browser_guard(headers, state.cors_origins, local=principal == "local")
                    if refusal is not None:
                        raise Forbidden(refusal, code="cross_origin_refused")
        except ApiError as exc:
            return _with_edge_headers(error_response(exc, request_id), request_id, security_headers)
        if any(p.startswith(WS_BEARER_PREFIX) for p in offered):
            # The handler cannot know to echo a credential sub-protocol, and a browser that offered
            # sub-protocols drops a handshake that selects none: accept here with the right one.
            g.websocket_subprotocol = choose_subprotocol(offered)
            await websocket.accept(subprotocol=g.websocket_subprotocol)
        return None

    async def handle_api_error(exc: ApiError) -> Response:
        return error_response(exc, getattr(g, "request_id", None))

    async def handle_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        method, path = (request.method, request.path) if has_request_context() else ("GET", websocket.path)
        if status == 404:
            message = f"no route for {method} {path}"
        elif status == 405:
            message = f"method {method} is not allowed for {path}"
        elif status == 413:
            message = f"request body exceeds the limit of {state.max_body} bytes"
        elif status >= 500:
            message = "Internal server error"
        response = error_response(ApiError(message, status=status, code=code_for_status(status)), getattr(g, "request_id", None))
        valid = getattr(exc, "valid_methods", None)
        if status == 405 and valid:
            response.headers["Allow"] = ", ".join(sorted(valid))
        return response

    async def handle_unexpected(exc: Exception) -> Response:
        # The client learns only the request id; the traceback goes to the log under that id, with
        # credential shapes and known secret values scrubbed (exception messages do carry them).
        request_id = getattr(g, "request_id", None)
        where = f"{request.method} {request.path}" if has_request_context() else f"WS {websocket.path}"
        log.error("unhandled error rid=%s %s\n%s", request_id, where, scrubbed_traceback(kernel, exc))
        return error_response(ApiError("Internal server error", status=500, code="internal_error"), request_id)

    app.before_request(before)
    app.after_request(after)
    app.before_websocket(before_ws)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)


async def _drain_body(req: Any) -> None:
    """Read a body the handler never consumed (an error answered early), so the keep-alive
    connection stays usable: with unread bytes left, Hypercorn drops it and a client's next
    request on it fails with "server disconnected"."""
    if not req.content_length and "chunked" not in req.headers.get("transfer-encoding", ""):
        return
    try:
        await req.get_data(cache=True)
    except Exception:  # noqa: BLE001 - too large or cut off: closing the connection is right then
        return


async def _charge(state: EdgeState, client: str, cost: int) -> None:
    """Take ``cost`` tokens from ``client``'s quota or raise 429 with an honest Retry-After."""
    allowed, wait = await state.limiter.acquire(client, cost)
    if allowed:
        return
    state.metrics.rate_limited.inc()
    # The real time until the request fits, capped by retry_after_secs (a request that can never fit,
    # cost above the burst, is told to come back after the cap).
    retry = min(max(1, math.ceil(wait)), state.retry_after)
    raise TooManyRequests(
        "Rate limit exceeded", code="rate_limited", headers={"Retry-After": str(retry)},
        details={"retry_after_seconds": retry, "cost": cost},
    )


def scrubbed_traceback(kernel: Kernel, exc: BaseException) -> str:
    """The formatted traceback of ``exc`` without secrets: credential shapes (see
    :func:`librefang.logs.scrub`), the API key and every value stored in the vault."""
    from librefang.logs import scrub

    text = "".join(traceback.format_exception(exc)).rstrip()
    secrets = list(kernel.vault.known_values())
    key = kernel.edge.secret_value
    if key:
        secrets.append(key)
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "***")
    return scrub(text)


def _with_edge_headers(response: Response, request_id: str, security_headers: list[tuple[str, str]]) -> Response:
    response.headers["x-request-id"] = request_id
    for name, value in security_headers:
        response.headers[name] = value
    return response


def _preflight(state: EdgeState, origin: str) -> Response:
    response = Response("", status=204)
    if origin in state.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response

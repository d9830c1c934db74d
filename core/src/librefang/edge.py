"""The edge every HTTP request passes, as ASGI middleware around the Quart app.

Order: ``/api/v1`` rewrite → request id → route facts → CORS preflight → body-size limit →
(public shell/assets: done) → rate limit → auth → the Quart app (route, JSON errors) → request id,
security headers and CORS stamped on the response start → metrics and the access log. The
limiter runs before auth on purpose: a client guessing keys pays for every guess, and a 401 flood
stops at 429 before it costs an audit tally. Loopback peers without forwarding headers skip the
limiter (the dashboard and CLI poll).

Why ASGI rather than Quart ``before_request``/``after_request`` hooks: a hook costs Quart a walk of
the blueprint chain and werkzeug ``Headers`` round-trips on every request, and a refusal (401,
429, 413) answered here never builds a Quart request at all. The per-route facts (public, cost,
body limit, route template) are computed once per app in :class:`RouteFacts` and looked up by
``(method, path)``; only paths with parameters go through werkzeug's matcher (cached, bounded).
The security headers are pre-encoded bytes appended to ``http.response.start``, so they are on
every response (errors and streams included) for the cost of one list ``extend``.

Quart keeps what needs its request context: the JSON error handlers (404/405/413 raised inside
Quart, :class:`~librefang.errors.ApiError` from handlers, unexpected exceptions) and the
WebSocket handshake checks (see :mod:`librefang.edgequart`). ``g.request_id`` and
``g.principal`` are read from a context variable this middleware sets.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from os import urandom
from typing import TYPE_CHECKING, Any

from librefang.auth import (
    ALWAYS_PUBLIC_PATHS,
    PUBLIC_ASSET_PREFIXES,
    Authenticator,
    AuthFailureAudit,
    browser_guard,
)
from librefang.errors import (
    ApiError,
    ConfigError,
    Forbidden,
    PayloadTooLarge,
    PluginError,
    TooManyRequests,
    Unauthorized,
)
from librefang.metrics import Metrics
from librefang.netutil import FORWARDING_HEADERS, ProxyTrust, is_loopback
from librefang.ratelimit import DEFAULT_COST, GcraLimiter, RateLimiter

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel
    from librefang.routing import RouteSpec

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
REQUEST_ID_KEY = "librefang.request_id"  # ASGI scope key: the id the edge gave this request
MAX_BODY_KEY = "librefang.max_body"  # ASGI scope key: the body limit of the matched route
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key, Idempotency-Key, X-Request-Id, Accept"
CORS_EXPOSE_HEADERS = "x-request-id, Retry-After"
API_V1 = "/api/v1/"
UNMATCHED = "<unmatched>"  # the metrics route label of a request no route matched
DRAIN_TIMEOUT = 10.0  # seconds an error response waits for an unread request body to arrive
MATCH_CACHE_SIZE = 2048

# (request id, principal) of the request being served; read through ``g`` (see edgequart.EdgeGlobals).
EDGE_CONTEXT: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "librefang.edge", default=(None, None)
)

_FORWARDING = frozenset(name.encode() for name in FORWARDING_HEADERS)
# The request headers the edge reads; one pass over the raw ASGI headers picks them out.
_WANTED = frozenset({
    b"origin", b"authorization", b"x-api-key", b"content-length", b"transfer-encoding", b"host",
    b"access-control-request-method", *_FORWARDING,
})
_CORS_PREFLIGHT = (
    (b"access-control-allow-methods", CORS_ALLOW_METHODS.encode()),
    (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
    (b"access-control-max-age", b"600"),
)
_JSON = (b"content-type", b"application/json")


class EdgeState:
    """Per-kernel edge services. The limiter, the metrics and the auth-failure tallies survive app
    rebuilds (hot reload) and config reloads; :meth:`configure` re-reads everything else."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.metrics = Metrics(kernel)
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
        self.cors_origin_bytes = frozenset(origin.encode("latin-1") for origin in self.cors_origins)

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        return self.metrics.in_flight

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


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the edge needs to know about a matched route, computed once per app."""

    public: bool
    cost: int
    template: str  # the route template: the metrics label
    max_body: Callable[[], int] | None  # None: the global max_request_body_bytes


def body_limit_reader(kernel: Kernel, spec: RouteSpec) -> Callable[[], int] | None:
    """The per-request reader of ``spec.max_body`` (None when the route uses the global limit)."""
    declared = spec.max_body
    if declared is None:
        return None
    if isinstance(declared, int):
        return lambda: declared
    if isinstance(declared, str):
        if not hasattr(kernel.config.core, declared):
            raise PluginError(f"route {spec.method} {spec.path}: max_body names no [core] config key {declared!r}")
        core_config = kernel.config
        return lambda: int(getattr(core_config.core, declared))
    return lambda: int(declared(kernel))


class RouteTable:
    """``(method, path)`` → :class:`RouteFacts`: a dict for paths without parameters, werkzeug's
    matcher (results cached, bounded) for the rest."""

    def __init__(self, url_map: Any, facts: dict[tuple[str, str], RouteFacts]) -> None:
        """``facts`` is keyed by (app endpoint, method); the app's rules are already in ``url_map``."""
        self.by_endpoint = facts
        self.exact: dict[tuple[str, str], RouteFacts] = {}
        for rule in url_map.iter_rules():
            if rule.arguments or getattr(rule, "websocket", False):
                continue
            for method in rule.methods or ():
                found = facts.get((rule.endpoint, "GET" if method == "HEAD" else method))
                if found is not None:
                    self.exact[(method, rule.rule)] = found
        self.adapter = url_map.bind("localhost")
        self._cache: dict[tuple[str, str], RouteFacts | None] = {}

    def match(self, method: str, path: str) -> RouteFacts | None:
        """The facts of the route ``method path`` reaches, or None (404, 405, or not a declared route)."""
        key = (method, path)
        if key in self._cache:
            return self._cache[key]
        from werkzeug.exceptions import HTTPException

        try:
            rule, _ = self.adapter.match(path, method, return_rule=True, websocket=False)
        except HTTPException:
            found = None
        else:
            lookup = "GET" if method == "HEAD" else method
            found = self.by_endpoint.get((rule.endpoint, lookup)) or self.by_endpoint.get((rule.endpoint, "*"))
        if len(self._cache) >= MATCH_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found


class Edge:
    """The ASGI middleware: see the module docstring for what it does, in which order."""

    def __init__(self, app: Any, state: EdgeState, routes: RouteTable) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if path.startswith(API_V1):
            scope = _rewrite_v1(scope)
            path = scope["path"]
        if scope["type"] != "http":
            EDGE_CONTEXT.set((None, None))  # the WebSocket hook sets g.request_id itself
            await self.app(scope, receive, send)
            return
        state = self.state
        metrics = state.metrics
        started = time.perf_counter()
        request_id = new_request_id()
        scope[REQUEST_ID_KEY] = request_id
        method = scope["method"]
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in found:
                found[name] = value
        facts = self.routes.exact.get((method, path)) or self.routes.match(method, path)
        if facts is None:
            public = method in ("GET", "HEAD") and path.startswith(PUBLIC_ASSET_PREFIXES) or path in ALWAYS_PUBLIC_PATHS
            cost, template, limit = DEFAULT_COST, UNMATCHED, state.max_body
        else:
            public, cost, template = facts.public, facts.cost, facts.template
            limit = state.max_body if facts.max_body is None else facts.max_body()
        scope[MAX_BODY_KEY] = limit
        origin = found.get(b"origin")
        stamp = [(b"x-request-id", request_id.encode()), *SECURITY_HEADER_BYTES]
        if origin is not None and origin in state.cors_origin_bytes:
            stamp += ((b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                      (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()))
        metrics.in_flight += 1
        status = 0
        try:
            if method == "OPTIONS" and origin is not None and b"access-control-request-method" in found:
                status = 204
                await _preflight(send, stamp, origin in state.cors_origin_bytes)
                return
            principal = None
            try:
                length = found.get(b"content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise PayloadTooLarge(
                        f"request body of {int(length)} bytes exceeds the limit of {limit} bytes",
                        code="payload_too_large",
                    )
                if not (public and (path in ALWAYS_PUBLIC_PATHS or path.startswith(PUBLIC_ASSET_PREFIXES))):
                    # Not the WebChat shell or its assets: the limiter and the credential apply.
                    principal = await self._admit(scope, found, path, public, cost, request_id)
            except ApiError as exc:
                status = exc.status
                if status != 413 and method in BODY_METHODS:
                    await _drain(receive, found, limit)
                await _send_error(send, exc, request_id, stamp)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a shared limiter store that is down: still JSON
                from librefang.edgequart import scrubbed_traceback

                log.error("unhandled error rid=%s %s %s\n%s", request_id, method, path,
                          scrubbed_traceback(state.kernel, exc))
                status = 500
                await _send_error(send, ApiError("Internal server error", status=500, code="internal_error"),
                                  request_id, stamp)
                return
            EDGE_CONTEXT.set((request_id, principal))

            async def send_stamped(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = [h for h in message.get("headers", ()) if h[0] not in EDGE_HEADER_BYTES]
                    headers += stamp
                    message["headers"] = headers
                    if status >= 400 and body_done is not None and status != 413 and not body_done.is_set():
                        await _wait_for_body(body_done)
                await send(message)

            body_done: asyncio.Event | None = None
            if method in BODY_METHODS and _has_body(found):
                # An error answered before the handler read the body must still let the body
                # arrive (Quart's receiver keeps reading it), or Hypercorn drops the keep-alive
                # connection and the client's next request on it fails.
                body_done = asyncio.Event()
                receive = _tracking(receive, body_done)
            await self.app(scope, receive, send_stamped)
        finally:
            metrics.in_flight -= 1
            status = status or 500
            metrics.observe(method, template, status, time.perf_counter() - started)
            if status >= 400:
                log_at = access_log.error if status >= 500 else access_log.warning
                log_at("%s %s %s rid=%s", method, path, status, request_id)

    async def _admit(self, scope: dict[str, Any], found: dict[bytes, bytes], path: str, public: bool,
                     cost: int, request_id: str) -> str | None:
        """Charge the limiter (unless a local peer) and check the credential (unless public)."""
        state = self.state
        peer = (scope.get("client") or ("",))[0] or ""
        local = _FORWARDING.isdisjoint(found) and is_loopback(peer)
        if local and public:
            return None
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in found.items()}
        if not local:
            await charge(state, state.proxies.client_ip(peer, headers), cost)
        if public:
            return None
        try:
            principal = state.auth.check(headers, peer)
        except Unauthorized as exc:
            state.metrics.auth_failures += 1
            client = peer if local else state.proxies.client_ip(peer, headers)
            state.auth_audit.note(client or "unknown", path, exc.code, request_id)
            raise
        if principal in NO_KEY_PRINCIPALS:
            refusal = browser_guard(headers, state.cors_origins, local=principal == "local")
            if refusal is not None:
                raise Forbidden(refusal, code="cross_origin_refused")
        return principal


def new_request_id() -> str:
    """A fresh random UUID v4 in its canonical text form (what ``str(uuid.uuid4())`` gives, without
    building a ``UUID`` object: this runs on every request)."""
    raw = bytearray(urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _rewrite_v1(scope: dict[str, Any]) -> dict[str, Any]:
    """Serve ``/api/v1/...`` as ``/api/...`` (a new scope: the server's own dict is left alone)."""
    scope = dict(scope)
    scope["path"] = "/api/" + scope["path"][len(API_V1):]
    raw = scope.get("raw_path")
    if raw:
        scope["raw_path"] = b"/api/" + raw[len(API_V1):]
    return scope


def _has_body(found: dict[bytes, bytes]) -> bool:
    length = found.get(b"content-length")
    if length is not None:
        return length != b"0"
    return b"chunked" in found.get(b"transfer-encoding", b"").lower()


def _tracking(receive: Any, done: asyncio.Event) -> Any:
    async def tracked() -> dict[str, Any]:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            done.set()
        return message

    return tracked


async def _wait_for_body(done: asyncio.Event) -> None:
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await done.wait()
    except TimeoutError:  # a client that stops sending: the connection is closed after the answer
        return


async def _drain(receive: Any, found: dict[bytes, bytes], limit: int) -> None:
    """Read the body of a request refused before the app ran (keep-alive stays usable); a body
    larger than ``limit`` is left unread and the server closes the connection."""
    if not _has_body(found):
        return
    received = 0
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                received += len(message.get("body", b""))
                if not message.get("more_body", False) or received > limit:
                    return
    except TimeoutError:
        return


async def _send_error(send: Any, exc: ApiError, request_id: str, stamp: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(exc.body(request_id)).encode()
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    headers += ((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items())
    headers += stamp
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _preflight(send: Any, stamp: list[tuple[bytes, bytes]], allowed: bool) -> None:
    headers = [(b"content-length", b"0"), *stamp]
    if allowed:
        headers += _CORS_PREFLIGHT
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def charge(state: EdgeState, client: str, cost: int) -> None:
    """Take ``cost`` tokens from ``client``'s quota or raise 429 with an honest Retry-After."""
    limiter = state.limiter
    if type(limiter) is GcraLimiter:  # in-process: its synchronous core, no coroutine to build
        allowed, wait = limiter.take(client, cost)
    else:
        allowed, wait = await limiter.acquire(client, cost)
    if allowed:
        return
    state.metrics.rate_limited += 1
    # The real time until the request fits, capped by retry_after_secs (a request that can never fit,
    # cost above the burst, is told to come back after the cap).
    retry = min(max(1, math.ceil(wait)), state.retry_after)
    raise TooManyRequests(
        "Rate limit exceeded", code="rate_limited", headers={"Retry-After": str(retry)},
        details={"retry_after_seconds": retry, "cost": cost},
    )

"""The part of the edge that lives inside Quart: JSON error handlers, the WebSocket handshake
checks, the request class enforcing each route's body limit while streaming, and the ``g``
object that answers ``g.request_id`` / ``g.principal`` from what the ASGI edge decided
(:mod:`librefang.edge`)."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
import uuid
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, has_request_context, request, websocket
from quart.ctx import _AppCtxGlobals
from quart.wrappers import Request
from quart.wrappers.request import Body
from werkzeug.exceptions import HTTPException, RequestTimeout

from librefang.auth import WS_BEARER_PREFIX, browser_guard, choose_subprotocol
from librefang.edge import (
    EDGE_CONTEXT,
    MAX_BODY_KEY,
    NO_KEY_PRINCIPALS,
    SECURITY_HEADERS,
    EdgeState,
    charge,
)
from librefang.errors import ApiError, Forbidden, Unauthorized, code_for_status
from librefang.netutil import has_forwarding_headers, is_loopback
from librefang.ratelimit import DEFAULT_COST

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

log = logging.getLogger("librefang.edge")
_FROM_EDGE = {"request_id": 0, "principal": 1}


class EdgeGlobals(_AppCtxGlobals):
    """Quart's ``g``, where ``request_id`` and ``principal`` come from the ASGI edge unless set here.

    The edge decides them before Quart builds its request; reading them lazily from a context
    variable spares a ``before_request`` hook (and its blueprint walk) on every request.
    """

    def __getattr__(self, name: str) -> Any:
        index = _FROM_EDGE.get(name)
        if index is not None:
            value = EDGE_CONTEXT.get()[index]
            if value is not None:
                return value
        raise AttributeError(name)

    def get(self, name: str, default: Any | None = None) -> Any:
        return getattr(self, name, default)

    def __contains__(self, item: str) -> bool:
        return hasattr(self, item)


class EdgeBody(Body):
    """Quart's request body, which also hands over a body that has already arrived without waiting."""

    def ready(self) -> bytes | None:
        """The whole body when it has arrived within its limit, else None (then await it: Quart's
        ``get_data`` waits with the body timeout and raises 413 past the limit).

        Quart's ``get_data`` always waits through ``asyncio.wait_for``, a task and a timer per call,
        even for a body already complete; Quart's receiver reads a small body before the handler
        runs, so a JSON route normally finds it here."""
        if self._must_raise is None and self._complete.is_set():
            return bytes(self._data)
        return None

    async def wait_bytes(self, seconds: float | None) -> bytes:
        """The whole body, waiting up to ``seconds`` for the rest of it (then 408, as
        Quart's ``get_data``), without the task ``asyncio.wait_for`` starts for the wait."""
        ready = self.ready()
        if ready is not None:
            return ready
        try:
            async with asyncio.timeout(seconds):
                return await self
        except TimeoutError as exc:
            raise RequestTimeout() from exc


class EdgeRequest(Request):
    """Quart's request, with the body limit the edge chose for the matched route (streamed bodies
    larger than it raise 413 as they arrive, exactly as with the global limit)."""

    body_class = EdgeBody

    def __init__(self, *args: Any, max_content_length: int | None = None, scope: Any, **kwargs: Any) -> None:
        limit = scope.get(MAX_BODY_KEY, max_content_length)
        super().__init__(*args, max_content_length=limit, scope=scope, **kwargs)
        self._max_content_length = limit


def error_response(exc: ApiError, request_id: str | None) -> Response:
    """The JSON error response for ``exc`` (headers such as Retry-After included)."""
    response = Response(json.dumps(exc.body(request_id)), status=exc.status, mimetype="application/json")
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def install_edge(app: Quart, kernel: Kernel, specs: dict[str, Any]) -> None:
    """Attach the Quart side of the edge to a freshly built app (``specs``: app endpoint → spec)."""
    state: EdgeState = kernel.edge
    app.app_ctx_globals_class = EdgeGlobals
    app.request_class = EdgeRequest
    app.config["MAX_CONTENT_LENGTH"] = state.max_body

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
                await charge(state, state.proxies.client_ip(peer, headers), spec.cost if spec else DEFAULT_COST)
            if spec is None or not spec.public:
                try:
                    principal = g.principal = state.auth.check(headers, peer, offered)
                except Unauthorized as exc:
                    state.metrics.auth_failures += 1
                    client = peer if local else state.proxies.client_ip(peer, headers)
                    state.auth_audit.note(client or "unknown", websocket.path, exc.code, request_id)
                    raise
                if principal in NO_KEY_PRINCIPALS:  # cross-site WebSocket hijacking, DNS rebinding
                    refusal = browser_guard(headers, state.cors_origins, local=principal == "local")
                    if refusal is not None:
                        raise Forbidden(refusal, code="cross_origin_refused")
        except ApiError as exc:
            response = error_response(exc, request_id)
            response.headers["x-request-id"] = request_id
            for name, value in SECURITY_HEADERS.items():
                response.headers[name] = value
            return response
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
        in_request = has_request_context()
        method, path = (request.method, request.path) if in_request else ("GET", websocket.path)
        if status == 404:
            message = f"no route for {method} {path}"
            if "//" in path:
                message += " (the path has an empty segment: '//')"
        elif status == 405:
            message = f"method {method} is not allowed for {path}"
        elif status == 413:
            limit = request.max_content_length if in_request else None
            message = f"request body exceeds the limit of {limit or state.max_body} bytes"
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

    app.before_websocket(before_ws)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)


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

"""Build a Quart app from a kernel's route table. Reload builds a new app; it never mutates one."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from quart import Quart

from librefang.edge import EDGE_HEADER_BYTES, REQUEST_ID_KEY, SECURITY_HEADER_BYTES, EdgeState, install_edge

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

API_V1 = "/api/v1/"


def _asgi_edge(asgi_app: Any) -> Any:
    """The ASGI part of the edge: serve ``/api/...`` at ``/api/v1/...`` too (path rewrite), give
    every HTTP request its id, and stamp the request id and the static security headers on every
    response start as pre-encoded bytes. Doing this below Quart covers errors, streams and early
    refusals alike, and costs far less than editing Quart's header objects per response."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if path.startswith(API_V1):
            scope = dict(scope)
            scope["path"] = "/api/" + path[len(API_V1) :]
            raw = scope.get("raw_path")
            if raw:
                scope["raw_path"] = b"/api/" + raw[len(API_V1) :]
        if scope["type"] != "http":
            await asgi_app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[REQUEST_ID_KEY] = request_id
        stamp = [(b"x-request-id", request_id.encode()), *SECURITY_HEADER_BYTES]

        async def send_stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() not in EDGE_HEADER_BYTES]
                headers.extend(stamp)
                message = {**message, "headers": headers}
            await send(message)

        await asgi_app(scope, receive, send_stamped)

    return app


def build_app(kernel: Kernel) -> Quart:
    """A new Quart app serving every route in the kernel's route table, behind the edge."""
    if getattr(kernel, "edge", None) is None:
        kernel.edge = EdgeState(kernel)
    app = Quart("librefang")
    app.config["LIBREFANG_KERNEL"] = kernel
    app.config["RESPONSE_TIMEOUT"] = None  # SSE and long agent turns must not be cut by Quart
    app.config["BODY_TIMEOUT"] = 60
    app.json.sort_keys = False
    app.url_map.strict_slashes = False
    for routers in kernel.routes.routers.values():
        for router in routers:
            app.register_blueprint(router.blueprint)
    install_edge(app, kernel)
    app.asgi_app = _asgi_edge(app.asgi_app)  # type: ignore[method-assign]
    return app

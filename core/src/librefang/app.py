"""Build a Quart app from a kernel's route table. Reload builds a new app; it never mutates one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Quart

from librefang.edge import EdgeState, install_edge

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

API_V1 = "/api/v1/"


def _versioned_paths(asgi_app: Any) -> Any:
    """Serve every ``/api/...`` route at ``/api/v1/...`` too, by rewriting the path."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if path.startswith(API_V1):
            scope = dict(scope)
            scope["path"] = "/api/" + path[len(API_V1) :]
            raw = scope.get("raw_path")
            if raw:
                scope["raw_path"] = b"/api/" + raw[len(API_V1) :]
        await asgi_app(scope, receive, send)

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
    app.asgi_app = _versioned_paths(app.asgi_app)  # type: ignore[method-assign]
    return app

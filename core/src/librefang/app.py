"""Build a Quart app from a kernel's route table. Reload builds a new app; it never mutates one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Quart

from librefang.edge import Edge, EdgeState, RouteFacts, RouteTable, body_limit_reader
from librefang.edgequart import install_edge
from librefang.quartapp import EdgeQuart
from librefang.urlrules import LazyBuildRule

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

API_V1 = "/api/v1/"
ROUTE_SPECS_KEY = "LIBREFANG_ROUTE_SPECS"  # app.config: app endpoint -> RouteSpec (see build_app)


def build_app(kernel: Kernel) -> Quart:
    """A new Quart app serving every route in the kernel's route table, behind the edge."""
    if getattr(kernel, "edge", None) is None:
        kernel.edge = EdgeState(kernel)
    app = EdgeQuart("librefang")
    app.url_rule_class = LazyBuildRule  # URL builders compiled on first url_for (see urlrules.py)
    app.config["LIBREFANG_KERNEL"] = kernel
    app.config["RESPONSE_TIMEOUT"] = None  # SSE and long agent turns must not be cut by Quart
    app.config["BODY_TIMEOUT"] = 60
    app.json.sort_keys = False
    app.url_map.strict_slashes = False
    # "//" in a path: werkzeug would answer an HTML 308 redirect to the merged path; unmerged, such
    # a path matches no route and gets the edge's JSON 404 (with a request id) like any other.
    app.url_map.merge_slashes = False
    facts: dict[tuple[str, str], RouteFacts] = {}
    websockets: dict[str, Any] = {}
    # The app's endpoint names (what ``url_map`` rules carry) → their route declarations.
    declared: dict[str, Any] = app.config.setdefault(ROUTE_SPECS_KEY, {})
    for routers in kernel.routes.routers.values():
        for router in routers:
            direct = _add_views(app, router)
            for spec in router.specs:
                endpoint = spec.endpoint.replace(".", ":", 1) if direct else spec.endpoint
                declared[endpoint] = spec
                if spec.websocket:
                    websockets[endpoint] = spec
                    continue
                route = RouteFacts(spec.public, spec.cost, spec.path, body_limit_reader(kernel, spec))
                facts[(endpoint, spec.method)] = route
                facts.setdefault((endpoint, "*"), route)  # automatic OPTIONS of the route
    install_edge(app, kernel, websockets)
    app.asgi_app = Edge(app.asgi_app, kernel.edge, RouteTable(app.url_map, facts))  # type: ignore[method-assign]
    return app


def _add_views(app: Quart, router: Any) -> bool:
    """Add the router's views to the app itself (True), or its blueprint when it holds more than
    the router declared (False). Endpoints added directly are named ``<router>:<function>``: with no
    dot in the name, Quart walks no blueprint chain for the request, which it otherwise does for
    every hook lookup of every request."""
    views = getattr(router, "views", None)
    if not views or len(views) != len(router.blueprint.deferred_functions):
        app.register_blueprint(router.blueprint)
        return False
    for view in views:
        endpoint = f"{router.name}:{view.endpoint}"
        if view.websocket:
            app.add_websocket(view.path, endpoint, view.view)
        else:
            app.add_url_rule(view.path, endpoint, view.view, methods=list(view.methods))
    return True

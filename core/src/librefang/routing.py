"""Route declaration for plugins: a Quart blueprint plus per-route metadata.

A plugin builds a :class:`Router`, declares routes with their auth, rate cost and pydantic models,
and hands it to the host through the ``register_routes`` hook::

    router = Router("hello")

    @router.get("/api/hello", cost=1, response=Hello)
    async def hello() -> Hello:
        return Hello(text="hi")

Handlers receive the validated body as ``body=`` and the validated query string as ``query=``
when models are declared, and may return a pydantic model, a dict/list (sent as JSON), or any
Quart response.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, current_app, request
from quart.json.provider import DefaultJSONProvider
from werkzeug.datastructures import Headers

from librefang.errors import BadRequest
from librefang.jsonbody import parse_json_bytes, read_json_bytes, shallow_json_text
from librefang.ratelimit import DEFAULT_COST, route_cost


@dataclass(frozen=True)
class RouteSpec:
    """What the host knows about one route."""

    method: str
    path: str
    endpoint: str
    public: bool = False
    cost: int = DEFAULT_COST
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    summary: str = ""
    websocket: bool = False
    idempotent: bool = False
    plugin: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Largest request body this route accepts, overriding ``max_request_body_bytes``: bytes, the
    # name of a ``[core]`` config key, or a callable ``(kernel) -> bytes`` (read per request).
    max_body: int | str | Callable[[Any], int] | None = None


@dataclass(frozen=True)
class RouteView:
    """One view function as added to the router's blueprint (``endpoint`` without the router name)."""

    path: str
    endpoint: str
    view: Callable[..., Any]
    methods: tuple[str, ...]
    websocket: bool


def _check_max_body(max_body: Any) -> None:
    if max_body is None or callable(max_body) or isinstance(max_body, str):
        return
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ValueError(f"max_body must be a positive number of bytes, a config key or a callable, not {max_body!r}")


def format_validation_error(exc: ValidationError, where: str) -> str:
    """A one-line message naming the fields that failed, e.g. ``body.name: Field required``."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}.{loc}: {err.get('msg')}" if loc else f"{where}: {err.get('msg')}")
    return "; ".join(parts)


JSON_CONTENT_TYPE = "application/json"  # what werkzeug makes of mimetype="application/json" (no charset)
_ENCODERS: dict[tuple[Any, bool, bool], json.JSONEncoder] = {}  # (default, ensure_ascii, sort_keys) → encoder


def json_response(body: bytes, status: int, response_class: type[Response] = Response) -> Response:
    """The response Quart builds from ``response_class(body_text, status, content_type="application/json")``
    (Content-Type, then the Content-Length it sets), with its headers set in one step."""
    if response_class is not Response:  # a subclass may build its response differently
        return response_class(body, status=status, content_type=JSON_CONTENT_TYPE)
    headers = Headers()
    headers[:] = [("Content-Type", JSON_CONTENT_TYPE), ("Content-Length", str(len(body)))]
    return Response(Response.data_body_class(body), status=status, headers=headers)


def _compact_json(provider: Any, value: Any) -> str:
    """``provider.dumps(value, separators=(",", ":"))`` for Flask's DefaultJSONProvider, with the
    encoder built once per set of provider settings instead of on every call."""
    key = (provider.default, provider.ensure_ascii, provider.sort_keys)
    encoder = _ENCODERS.get(key)
    if encoder is None:
        if len(_ENCODERS) >= 16:
            _ENCODERS.clear()
        encoder = _ENCODERS[key] = json.JSONEncoder(
            ensure_ascii=key[1], sort_keys=key[2], separators=(",", ":"), default=key[0])
    return encoder.encode(value)


def to_response(result: Any, status: int) -> Any:
    """Turn a handler's return value into something Quart sends."""
    if isinstance(result, BaseModel):
        return json_response(result.model_dump_json().encode(), status)
    if isinstance(result, dict | list):
        # What Quart's make_response does with ``(result, status)`` (the app's JSON provider,
        # compact unless in debug mode, a final newline), without its type checks.
        app = current_app._get_current_object()  # type: ignore[attr-defined] # one proxy lookup, not four
        provider = app.json
        compact = getattr(provider, "compact", False)
        if (type(provider) is not DefaultJSONProvider or provider.mimetype != JSON_CONTENT_TYPE
                or compact is False or (compact is None and app.debug)):
            response = provider.response(result)
            if status != 200:
                response.status_code = status
            return response
        text = _compact_json(provider, result)
        return json_response(f"{text}\n".encode(), status, app.response_class)
    return result


# Markers in a pydantic core schema of what validates differently from JSON text than from the
# Python objects ``json.loads`` gives: strict fields (a strict UUID/datetime/enum takes a JSON
# string, not a Python str), types with a JSON-specific schema (e.g. Path), base64 bytes, Decimal
# (pydantic reads a JSON number's digits; json.loads rounds it to a float first), Json[...].
_JSON_MODE_MARKERS = ("'strict': True", "json-or-python", "'type': 'decimal'", "val_json_bytes", "'type': 'json'")


class BodyReader:
    """Reads a route's JSON body into its pydantic model (one per route, built at declaration).

    A well-formed body of a model that validates the same from JSON text as from parsed objects
    goes straight from bytes to the model through pydantic's JSON parser, one call. Anything else,
    and every body that fails there, takes the guarded path (:func:`parse_json_bytes`, then
    ``model_validate``), so bad input gets exactly the answers it always got."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self._from_json: bool | None = None  # decided on first use: a deferred model builds then

    def from_json(self) -> bool:
        """True when the model may validate straight from JSON text (see :data:`_JSON_MODE_MARKERS`)."""
        if self._from_json is None:
            try:
                if not self.model.__pydantic_complete__:
                    self.model.model_rebuild()
                schema = repr(self.model.__pydantic_core_schema__)
            except Exception:  # noqa: BLE001 - a model that cannot build: the guarded path reports it
                self._from_json = False
            else:
                self._from_json = not any(marker in schema for marker in _JSON_MODE_MARKERS)
        return self._from_json

    async def __call__(self) -> BaseModel:
        raw = await read_json_bytes(request._get_current_object())  # type: ignore[attr-defined]
        if shallow_json_text(raw) and self.from_json():
            try:
                return self.model.model_validate_json(raw)
            except ValidationError:
                pass  # the guarded path below names the problem as it always has
        data = parse_json_bytes(raw)
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise BadRequest(format_validation_error(exc, "body"), code="invalid_body") from None


class Router:
    """A set of routes owned by one plugin (wraps a Quart :class:`~quart.Blueprint`)."""

    def __init__(self, name: str, *, tags: tuple[str, ...] = ()) -> None:
        self.name = name
        self.blueprint = Blueprint(name, __name__)
        self.specs: list[RouteSpec] = []
        self.tags = tags or (name,)
        # What was added to the blueprint, so the app can register the views directly (no
        # blueprint walk per request); see librefang.app.build_app.
        self.views: list[RouteView] = []

    def route(
        self,
        path: str,
        methods: tuple[str, ...] | list[str] = ("GET",),
        *,
        public: bool = False,
        cost: int | None = None,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        summary: str = "",
        idempotent: bool = False,
        max_body: int | str | Callable[[Any], int] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare an HTTP route. ``public`` routes need no credential; ``cost`` is in limiter tokens
        (default: the reference cost table, :func:`librefang.ratelimit.route_cost`); ``idempotent``
        opts a creating POST into ``Idempotency-Key`` replay.

        ``max_body`` replaces the global ``max_request_body_bytes`` for this route only: a number
        of bytes, the name of a ``[core]`` config key (e.g. ``"max_upload_size_bytes"``), or a
        callable taking the kernel and returning bytes. Config keys and callables are read on
        every request, so a config reload applies at once. The edge answers 413 when the declared
        ``Content-Length`` is larger, and while streaming when the body grows past it.
        """
        _check_max_body(max_body)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            endpoint = fn.__name__
            wants_body = body is not None
            wants_query = query is not None
            read_body = BodyReader(body) if body is not None else None
            is_coroutine = inspect.iscoroutinefunction(fn)

            @functools.wraps(fn)
            async def checked_view(**kwargs: Any) -> Any:
                if read_body is not None:
                    kwargs["body"] = await read_body()
                if wants_query:
                    try:
                        kwargs["query"] = query.model_validate(request.args.to_dict())
                    except ValidationError as exc:
                        raise BadRequest(format_validation_error(exc, "query"), code="invalid_query") from None
                if is_coroutine:
                    result = await fn(**kwargs)
                else:
                    result = fn(**kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                return to_response(result, status)

            view: Callable[..., Any]
            if not (wants_body or wants_query or idempotent) and is_coroutine:
                # The common case (no body, no query model, no replay): one frame between Quart and
                # the handler instead of two; it runs on every request of such a route.
                @functools.wraps(fn)
                async def direct_view(**kwargs: Any) -> Any:
                    result = await fn(**kwargs)
                    if isinstance(result, BaseModel):
                        return json_response(result.model_dump_json().encode(), status)
                    return to_response(result, status)

                view = direct_view
            elif idempotent:
                @functools.wraps(fn)
                async def idempotent_view(**kwargs: Any) -> Any:
                    # Idempotency-Key replay (core service, see librefang.idempotency)
                    from librefang.idempotency import run_idempotent

                    return await run_idempotent(lambda: checked_view(**kwargs))

                view = idempotent_view
            else:
                view = checked_view

            for method in methods:
                self.specs.append(
                    RouteSpec(
                        method=method.upper(),
                        path=path,
                        endpoint=f"{self.name}.{endpoint}",
                        public=public,
                        cost=cost if cost is not None else route_cost(method, path),
                        body=body,
                        query=query,
                        response=response,
                        status=status,
                        summary=summary or (fn.__doc__ or "").strip().split("\n")[0],
                        idempotent=idempotent,
                        tags=self.tags,
                        max_body=max_body,
                    )
                )
            self.blueprint.add_url_rule(path, endpoint, view, methods=list(methods))
            self.views.append(RouteView(path, endpoint, view, tuple(m.upper() for m in methods), False))
            return fn

        return decorator

    def get(self, path: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(path, ("GET",), **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(path, ("POST",), **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(path, ("PUT",), **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(path, ("PATCH",), **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route(path, ("DELETE",), **kw)

    def websocket(
        self, path: str, *, public: bool = False, cost: int | None = None, summary: str = ""
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare a WebSocket route (auth by header or the ``bearer.<key>`` sub-protocol)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            endpoint = fn.__name__
            self.specs.append(
                RouteSpec(
                    method="GET",
                    path=path,
                    endpoint=f"{self.name}.{endpoint}",
                    public=public,
                    cost=cost if cost is not None else route_cost("GET", path),
                    summary=summary or (fn.__doc__ or "").strip().split("\n")[0],
                    websocket=True,
                    tags=self.tags,
                )
            )
            self.blueprint.add_websocket(path, endpoint, fn)
            self.views.append(RouteView(path, endpoint, fn, ("GET",), True))
            return fn

        return decorator

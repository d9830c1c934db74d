"""The Quart app class of the daemon: Quart, minus per-request work for features nobody registered.

Quart runs the same pipeline for every request whether or not anything hooks into it: it sends
the ``request_started``/``request_finished`` signals, walks the app and blueprint chains for
URL-value preprocessors, ``before_request`` and ``after_request`` functions, turns the handler's
result into a response through ``make_response``'s type checks, and matches the path with
werkzeug's state machine. :class:`EdgeQuart` skips each step when there is provably nothing for it
to do (no receiver, no function registered, a result that already is a response) and remembers the
route a ``(method, path)`` matched; when a plugin or a test does register a hook or connect a
signal, the step runs exactly as in Quart. A request's URL adapter is bound only when something
uses it (:class:`LazyUrlAdapter`), and the handler runs in the task serving the request instead of
a task of its own (:class:`EdgeHTTPConnection`).

Measured with ``bench/asgi_micro.py`` (function calls per request, steady on a loaded machine):
``GET /api/health`` 599 → 353 and a JSON ``POST`` with body and response models 869 → 450
(the bare Quart app: 670), with the body and answer changes of :mod:`librefang.routing`; then
353 → 317 and 450 → 398 with the one-message body, the direct null session and the JSON answer
and content-type changes of :mod:`librefang.routing` and :mod:`librefang.jsonbody`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Quart
from quart.asgi import ASGIHTTPConnection, _handle_exception
from quart.ctx import RequestContext
from quart.sessions import SecureCookieSessionInterface
from quart.signals import appcontext_tearing_down, request_finished, request_started, request_tearing_down
from quart.utils import encode_headers
from quart.wrappers import Request, Response
from quart.wrappers.response import DataBody

MATCH_CACHE_SIZE = 2048  # (method, path) → matched rule; paths carry client-chosen ids: bounded


class EdgeHTTPConnection(ASGIHTTPConnection):
    """Quart's ASGI HTTP connection, running the handler in the task that serves the request.

    Quart starts two tasks per request, one reading the client's messages and one running the
    handler, waits for the first to finish (``asyncio.wait``) and cancels the other (``gather``).
    Here only the reader is a task; the handler runs in the calling task, which the reader cancels
    when the client disconnects (``http.disconnect``) or the reader fails, exactly as Quart cancels
    its handler task: the call then returns normally (or raises the reader's error), and the
    handler sees a ``CancelledError`` with ``current_task().cancelling()`` set, as before. A
    cancellation from outside (server shutdown) still propagates."""

    async def __call__(self, receive: Any, send: Any) -> None:
        request = self._create_request_from_scope(send)
        reader = asyncio.ensure_future(self.handle_messages(request, receive))
        task = asyncio.current_task()
        assert task is not None
        state = {"finished": False, "cancelled": False}

        def reader_done(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or state["finished"]:
                return
            state["cancelled"] = True
            task.cancel()

        reader.add_done_callback(reader_done)
        try:
            await asyncio.sleep(0)  # the reader takes what has arrived first, as with Quart's two tasks
            await self.handle_request(request, send)
        except asyncio.CancelledError:
            if not state["cancelled"]:
                if task.cancelling():
                    raise  # this task is being cancelled (server shutdown): let it end
                return  # the handler raised CancelledError itself: Quart's handler task ended "cancelled"
            state["cancelled"] = False
            if task.uncancel() > 0:
                raise  # cancelled from outside as well
            if not reader.cancelled() and reader.exception() is not None:
                raise reader.exception() from None  # type: ignore[misc]
            return
        finally:
            state["finished"] = True
            if state["cancelled"]:
                task.uncancel()  # the handler swallowed the disconnect's cancellation
            if not reader.done():
                reader.remove_done_callback(reader_done)
                reader.cancel()
        if not reader.cancelled() and reader.done() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]


    async def handle_request(self, request: Any, send: Any) -> None:
        """Quart's :meth:`~quart.asgi.ASGIHTTPConnection.handle_request`, bounding the send by the
        response timeout with ``asyncio.timeout`` (Quart's ``asyncio.wait_for`` runs the send in a
        task of its own when there is a timeout). As in Quart, a response not sent in time is
        abandoned silently; with no timeout it is simply awaited."""
        try:
            response = await self.app.handle_request(request)
        except Exception as error:  # noqa: BLE001 - as Quart: shown in debug/testing, else raised
            response = await _handle_exception(self.app, error)
        if isinstance(response, Response) and response.timeout != Ellipsis:
            timeout = response.timeout
        else:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        if timeout is None:
            await self._send_response(send, response)
            return
        try:
            async with asyncio.timeout(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass

    async def _send_response(self, send: Any, response: Any) -> None:
        """Quart's send; a body held whole in memory (a JSON answer) goes in one body message
        where Quart sends it and then an empty last one (the same bytes reach the client)."""
        body = getattr(response, "response", None)
        if type(body) is not DataBody:
            await super()._send_response(send, response)
            return
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": encode_headers(response.headers)})
        await send({"type": "http.response.body", "body": body.data[body.begin:body.end], "more_body": False})


class LazyUrlAdapter:
    """The URL adapter of one request, bound to it (host, scheme, path) on first use.

    Quart binds an adapter for every request when it builds the request context; binding parses
    the host. A request whose route match is remembered (:class:`EdgeRequestContext`) and that
    builds no URL never needs it."""

    __slots__ = ("_app", "_request", "_adapter")

    def __init__(self, app: Quart, request: Any) -> None:
        object.__setattr__(self, "_app", app)
        object.__setattr__(self, "_request", request)
        object.__setattr__(self, "_adapter", None)

    def bound(self) -> Any:
        """The real :class:`werkzeug.routing.MapAdapter` (bound now if it was not yet)."""
        adapter = self._adapter
        if adapter is None:
            adapter = Quart.create_url_adapter(self._app, self._request)
            object.__setattr__(self, "_adapter", adapter)
        return adapter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bound(), name)

    def __setattr__(self, name: str, value: Any) -> None:  # url_for sets url_scheme for _scheme=
        setattr(self.bound(), name, value)


class EdgeRequestContext(RequestContext):
    """Quart's request context, reusing the route an identical ``(method, path)`` matched before.

    The daemon's URL map matches on the path and method only (no host matching, no subdomains,
    no slash redirects: see :func:`librefang.app.build_app`), so the same pair always matches the
    same rule with the same arguments. Failed matches (404, 405) are not remembered."""

    async def push(self) -> None:
        """Quart's push. Quart opens a session for every request; with Quart's own cookie sessions
        and no secret key, opening one always gives None, then Quart's null session: made here."""
        app = self.app
        interface = app.session_interface
        if self.session is None and type(interface) is SecureCookieSessionInterface and not app.secret_key:
            self.session = interface.null_session_class()
        await super().push()

    def match_request(self) -> None:
        request = self.request_websocket
        cache: dict[tuple[str, str], Any] = self.app.match_cache  # type: ignore[attr-defined]
        key = (request.method, request.path)
        hit = cache.get(key)
        if hit is not None:
            request.url_rule, view_args = hit
            request.view_args = dict(view_args)  # preprocessors and handlers may change theirs
            return
        super().match_request()
        if request.routing_exception is None and request.url_rule is not None:
            if len(cache) >= MATCH_CACHE_SIZE:
                cache.clear()
            cache[key] = (request.url_rule, dict(request.view_args or {}))


class EdgeQuart(Quart):
    """Quart with the per-request steps nobody uses skipped (see the module docstring)."""

    asgi_http_class = EdgeHTTPConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.match_cache: dict[tuple[str, str], Any] = {}
        self._coroutine_views: frozenset[Any] | None = None

    def ensure_async(self, func: Any) -> Any:
        """Quart's :meth:`~quart.Quart.ensure_async`, answering a view function that is a coroutine
        function without inspecting it again (Quart asks for every request)."""
        views = self._coroutine_views
        if views is None:
            # The views present at the first call; one added later is inspected as in Quart.
            views = self._coroutine_views = frozenset(
                view for view in self.view_functions.values() if asyncio.iscoroutinefunction(view)
            )
        if func in views:
            return func
        return super().ensure_async(func)

    def create_url_adapter(self, request: Any) -> Any:
        """Quart's adapter; for a request, bound lazily (:class:`LazyUrlAdapter`)."""
        if request is None or self.url_map.host_matching or self.subdomain_matching:
            return super().create_url_adapter(request)
        return LazyUrlAdapter(self, request)

    def request_context(self, request: Request) -> RequestContext:
        """A request context that reuses earlier route matches (:class:`EdgeRequestContext`)."""
        if self.url_map.host_matching or self.subdomain_matching:
            return super().request_context(request)
        return EdgeRequestContext(self, request)

    def _has_request_preprocessing(self) -> bool:
        return any(self.url_value_preprocessors.values()) or any(self.before_request_funcs.values())

    async def full_dispatch_request(self, request_context: RequestContext | None = None) -> Any:
        """Quart's :meth:`~quart.Quart.full_dispatch_request`, without the signal send and the
        preprocessing walk when there is no receiver and nothing registered."""
        try:
            if request_started.receivers:
                await request_started.send_async(self, _sync_wrapper=self.ensure_async)  # type: ignore[arg-type]
            result = None
            if self._has_request_preprocessing():
                result = await self.preprocess_request(request_context)
            if result is None:
                result = await self.dispatch_request(request_context)
        except Exception as error:  # noqa: BLE001 - as Quart: the user exception handlers decide
            result = await self.handle_user_exception(error)
        return await self.finalize_request(result, request_context)

    async def finalize_request(
        self, result: Any, request_context: RequestContext | None = None, from_error_handler: bool = False
    ) -> Any:
        """Quart's :meth:`~quart.Quart.finalize_request`; a result that already is a response is
        used as is (what ``make_response`` does with it), and the after-request walk and the
        ``request_finished`` send are skipped when nothing is registered or connected."""
        if not (isinstance(result, Response) and request_context is not None) or not self._plain_finish(request_context):
            return await super().finalize_request(result, request_context, from_error_handler)
        return result

    async def do_teardown_request(self, exc: BaseException | None, request_context: RequestContext | None = None) -> None:
        """Quart's teardown, skipped when no teardown function is registered and no receiver connected."""
        if any(self.teardown_request_funcs.values()) or request_tearing_down.receivers:
            await super().do_teardown_request(exc, request_context)

    async def do_teardown_appcontext(self, exc: BaseException | None) -> None:
        """Quart's app-context teardown, skipped when nothing is registered or connected."""
        if self.teardown_appcontext_funcs or appcontext_tearing_down.receivers:
            await super().do_teardown_appcontext(exc)

    def _plain_finish(self, request_context: RequestContext) -> bool:
        """True when finishing a response does nothing: no after-request function (this request's
        or registered), no session to save, no ``request_finished`` receiver."""
        return (
            not request_context._after_request_functions
            and not any(self.after_request_funcs.values())
            and not request_finished.receivers
            and self.session_interface.is_null_session(request_context.session)
        )

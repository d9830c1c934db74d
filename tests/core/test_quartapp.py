"""EdgeQuart skips per-request steps only when nothing uses them: registered hooks, connected
signals and after_this_request still run; the route-match cache gives the same answers as
werkzeug's matcher and stays bounded."""

from __future__ import annotations

import asyncio

import librefang
import pytest
from librefang import quartapp
from librefang.app import build_app
from librefang.quartapp import EdgeQuart
from librefang.routing import Router
from librefang.testing import make_client
from quart import Response, after_this_request, g, request, url_for
from quart.signals import request_finished, request_started, request_tearing_down


class HookPlugin:
    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("hooks")

        @router.get("/api/hooks/items/<item_id>")
        async def item(item_id: str) -> dict[str, str]:
            return {"item": item_id, "seen": getattr(g, "seen", "")}

        @router.get("/api/hooks/links/<item_id>")
        async def links(item_id: str) -> dict[str, str]:
            return {
                "path": url_for("hooks:item", item_id=item_id),
                "external": url_for("hooks:item", item_id=item_id, _external=True),
                "https": url_for("hooks:item", item_id=item_id, _external=True, _scheme="https"),
                "again": url_for("hooks:item", item_id=item_id, _external=True),
            }

        @router.get("/api/hooks/later")
        async def later() -> Response:
            @after_this_request
            async def mark(response: Response) -> Response:
                response.headers["X-Later"] = "yes"
                return response

            return Response("ok")

        register(router)


@pytest.fixture
async def app(make_kernel):
    kernel = await make_kernel(plugins={"hooks": HookPlugin()}, load_entry_points=False)
    app = build_app(kernel)
    assert isinstance(app, EdgeQuart)
    return app


async def test_path_parameters_match_every_time_with_the_cache(app):
    client = make_client(app)
    for item in ("a", "b", "a", "a"):
        response = await client.get(f"/api/hooks/items/{item}")
        assert (await response.get_json())["item"] == item
    assert ("GET", "/api/hooks/items/a") in app.match_cache
    # 404 and 405 are answered by werkzeug every time and not remembered.
    assert (await client.get("/api/hooks/nowhere")).status_code == 404
    assert (await client.delete("/api/hooks/items/a")).status_code == 405
    assert ("GET", "/api/hooks/nowhere") not in app.match_cache
    assert ("DELETE", "/api/hooks/items/a") not in app.match_cache


async def test_match_cache_is_bounded(app, monkeypatch):
    monkeypatch.setattr(quartapp, "MATCH_CACHE_SIZE", 3)
    client = make_client(app)
    for i in range(10):
        assert (await client.get(f"/api/hooks/items/x{i}")).status_code == 200
        assert len(app.match_cache) <= 3


async def test_registered_hooks_and_signals_still_run(app):
    calls: list[str] = []

    @app.before_request
    async def before() -> None:
        g.seen = "before"

    @app.after_request
    async def after(response: Response) -> Response:
        response.headers["X-After"] = "1"
        return response

    async def started(sender, **kwargs) -> None:
        calls.append("started")

    async def finished(sender, response, **kwargs) -> None:
        calls.append(f"finished {response.status_code}")

    request_started.connect(started, app)
    request_finished.connect(finished, app)
    try:
        client = make_client(app)
        response = await client.get("/api/hooks/items/z")
        assert (await response.get_json()) == {"item": "z", "seen": "before"}
        assert response.headers["X-After"] == "1"
        assert calls == ["started", "finished 200"]
    finally:
        request_started.disconnect(started, app)
        request_finished.disconnect(finished, app)


async def test_after_this_request_runs(app):
    response = await make_client(app).get("/api/hooks/later")
    assert response.status_code == 200
    assert response.headers["X-Later"] == "yes"
    assert await response.get_data(as_text=True) == "ok"


async def test_url_value_preprocessor_may_change_its_own_view_args(app):
    @app.url_value_preprocessor
    def upper(endpoint, values) -> None:
        if values and "item_id" in values:
            values["item_id"] = values["item_id"].upper()

    client = make_client(app)
    for _ in range(2):  # the second request reads the cache: the stored arguments are untouched
        response = await client.get("/api/hooks/items/abc")
        assert (await response.get_json())["item"] == "ABC"


async def test_registered_teardowns_run(app):
    torn: list[str] = []

    @app.teardown_request
    async def request_done(exc) -> None:
        torn.append("request")

    @app.teardown_appcontext
    async def app_done(exc) -> None:
        torn.append("appcontext")

    async def tearing(sender, **kwargs) -> None:
        torn.append("signal")

    request_tearing_down.connect(tearing, app)
    try:
        assert (await make_client(app).get("/api/hooks/items/t")).status_code == 200
    finally:
        request_tearing_down.disconnect(tearing, app)
    assert torn == ["request", "signal", "appcontext"]


async def test_sync_views_still_run_off_the_loop(app):
    # A plain-def view added to the app is wrapped by Quart's ensure_async, as before.
    def sync_view() -> dict[str, bool]:
        return {"sync": True}

    app.add_url_rule("/api/hooks/sync", "sync_view", sync_view)
    assert app.ensure_async(sync_view) is not sync_view
    response = await make_client(app).get("/api/hooks/sync")
    assert await response.get_json() == {"sync": True}


async def test_url_for_binds_the_adapter_to_the_request_when_first_used(app):
    client = make_client(app)
    for _ in range(2):  # the second request's route match comes from the cache
        response = await client.get("/api/hooks/links/q1", headers={"Host": "localhost:8080"})
        assert await response.get_json() == {
            "path": "/api/hooks/items/q1",
            "external": "http://localhost:8080/api/hooks/items/q1",
            "https": "https://localhost:8080/api/hooks/items/q1",
            "again": "http://localhost:8080/api/hooks/items/q1",  # _scheme did not stick
        }


async def test_automatic_options_lists_the_methods(app):
    response = await make_client(app).options("/api/hooks/items/o")
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


async def test_json_provider_settings_are_honoured(app):
    client = make_client(app)
    app.json.compact = False  # what debug mode does: indented
    text = await (await client.get("/api/hooks/items/j")).get_data(as_text=True)
    assert text == '{\n  "item": "j",\n  "seen": ""\n}\n'
    app.json.compact = None
    text = await (await client.get("/api/hooks/items/j")).get_data(as_text=True)
    assert text == '{"item":"j","seen":""}\n'


def http_scope(path: str) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:4545")], "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4545), "extensions": {},
    }


async def test_a_client_disconnect_cancels_the_handler_and_the_call_returns(make_kernel):
    seen: dict[str, object] = {}
    release = asyncio.Event()

    class SlowPlugin:
        @librefang.hookimpl
        def register_routes(self, register):
            router = Router("slow")

            @router.get("/api/slow/wait")
            async def wait() -> dict[str, bool]:
                seen["started"] = True
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    seen["cancelling"] = asyncio.current_task().cancelling()
                    raise
                return {"never": True}

            @router.get("/api/slow/swallow")
            async def swallow() -> dict[str, bool]:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    seen["swallowed"] = True
                return {"late": True}

            register(router)

    kernel = await make_kernel(plugins={"slow": SlowPlugin()}, load_entry_points=False)
    app = build_app(kernel)
    async def call_and_disconnect(path: str) -> list[dict]:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await release.wait()  # the client goes away
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        async def serve() -> int:
            await app(http_scope(path), receive, send)
            return asyncio.current_task().cancelling()

        call = asyncio.ensure_future(serve())
        await asyncio.sleep(0.05)
        assert not call.done()
        release.set()
        assert await asyncio.wait_for(call, 5) == 0  # returned normally, nothing left cancelling
        release.clear()
        return sent

    sent = await call_and_disconnect("/api/slow/wait")
    assert seen["started"] and seen["cancelling"] == 1
    assert not any(m["type"] == "http.response.start" for m in sent)
    sent = await call_and_disconnect("/api/slow/swallow")
    assert seen["swallowed"]  # the handler went on: its answer is still sent
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200]


async def test_a_server_cancellation_still_propagates(make_kernel):
    kernel = await make_kernel(load_entry_points=False)
    app = build_app(kernel)
    blocked = asyncio.Event()

    async def receive() -> dict:
        await blocked.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await asyncio.Event().wait()  # a client that never reads: the server gives up

    call = asyncio.ensure_future(app(http_scope("/api/health"), receive, send))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 5)


async def call_app(app, path: str, headers: list | None = None) -> list[dict]:
    """One ASGI HTTP call; the messages the app sent (the client stays connected meanwhile)."""
    scope = http_scope(path)
    scope["headers"] = scope["headers"] + (headers or [])
    sent: list[dict] = []
    arrived = [{"type": "http.request", "body": b"", "more_body": False}]
    never = asyncio.Event()

    async def receive() -> dict:
        if arrived:
            return arrived.pop()
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


class ResponsesPlugin:
    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("responses")

        @router.get("/api/responses/range")
        async def ranged() -> Response:
            response = Response(b"0123456789", content_type="application/octet-stream")
            await response.make_conditional(request, accept_ranges=True, complete_length=10)
            return response

        @router.get("/api/responses/slow-stream")
        async def slow_stream() -> Response:
            async def chunks():
                yield b"first;"
                await asyncio.sleep(5)
                yield b"never"

            response = Response(chunks(), content_type="text/plain")
            response.timeout = 0.2  # this response's own send timeout
            return response

        register(router)


async def test_a_whole_body_is_one_body_message_with_the_same_bytes(make_kernel):
    kernel = await make_kernel(plugins={"responses": ResponsesPlugin()}, load_entry_points=False)
    app = build_app(kernel)
    sent = await call_app(app, "/api/health")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["more_body"] is False and sent[1]["body"].startswith(b'{"status":')
    # A range of a body held in memory: only the asked bytes, still one message.
    sent = await call_app(app, "/api/responses/range", [(b"range", b"bytes=2-4")])
    assert sent[0]["status"] == 206
    assert (b"content-range", b"bytes 2-4/10") in sent[0]["headers"]
    assert [m["body"] for m in sent[1:]] == [b"234"]


async def test_a_response_not_sent_within_its_timeout_is_abandoned_silently(make_kernel):
    kernel = await make_kernel(plugins={"responses": ResponsesPlugin()}, load_entry_points=False)
    app = build_app(kernel)
    started = asyncio.get_running_loop().time()
    sent = await call_app(app, "/api/responses/slow-stream")  # returns normally, as Quart's wait_for did
    assert asyncio.get_running_loop().time() - started < 2
    assert sent[0]["status"] == 200
    assert [m["body"] for m in sent[1:]] == [b"first;"]
    assert sent[-1]["more_body"] is True  # never finished: the server closes the connection


async def test_sessions_are_null_without_a_secret_key_and_work_with_one(app):
    from quart import session

    async def counter() -> dict[str, object]:
        if app.secret_key:  # a null session refuses writes
            session["n"] = session.get("n", 0) + 1
        return {"n": session.get("n"), "null": app.session_interface.is_null_session(session._get_current_object())}

    app.add_url_rule("/api/hooks/session", "counter", counter)
    client = make_client(app)
    assert await (await client.get("/api/hooks/session")).get_json() == {"n": None, "null": True}
    app.secret_key = "a-test-secret-key"
    assert await (await client.get("/api/hooks/session")).get_json() == {"n": 1, "null": False}
    assert await (await client.get("/api/hooks/session")).get_json() == {"n": 2, "null": False}  # cookie read back

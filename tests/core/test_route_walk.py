"""Walk the WHOLE route table (the core plus every installed plugin, so routes added later are
covered too) with an api_key configured: every non-public route answers 401 without a credential
and something other than 401 with one; every public route answers without a credential."""

from __future__ import annotations

import asyncio
import re
import uuid

import librefang
from librefang.app import ROUTE_SPECS_KEY, build_app
from librefang.auth import is_static_public
from librefang.routing import Router
from librefang.testing import make_client
from quart.testing import WebsocketResponseError

KEY = "walk-key-0123456789abcdef"
GOOD = {"Authorization": f"Bearer {KEY}"}
LOOPBACK = {"client": ("127.0.0.1", 50001)}  # loopback: not rate limited, but the key is still required
PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
ID_LIKE = re.compile(r"(^id$|_id$|^uuid$|^session$|^agent$)")


class LatePlugin:
    """Stands for a plugin someone adds later: its routes must be walked like any other."""

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("walklate")

        @router.get("/api/walklate/<item_id>/things/<path:rest>")
        async def late_things(item_id, rest):
            return {"id": item_id, "rest": rest}

        @router.post("/api/walklate/<int:count>")
        async def late_count(count):
            return {"count": count}

        @router.websocket("/api/walklate/ws")
        async def late_ws():
            from quart import websocket

            await websocket.send("hello")

        register(router)


def concrete(path: str) -> str:
    """A request path for a route template: uuid4 for id-like params, 1 for numbers, 'x' otherwise."""

    def value(match: re.Match[str]) -> str:
        converter, name = match.group("converter"), match.group("name")
        if converter in {"int", "float"}:
            return "1"
        if converter == "uuid" or ID_LIKE.search(name):
            return str(uuid.uuid4())
        return "x"

    return PARAM.sub(value, path)


async def http_status(client, method: str, path: str, headers: dict[str, str]) -> int:
    """The status line only: streaming routes (SSE) never finish, so the body is not awaited."""
    async with client.request(path, method=method, headers=headers, scope_base=LOOPBACK) as connection:
        await connection.send_complete()
        for _ in range(1000):
            if connection.status_code is not None:
                break
            await asyncio.sleep(0.005)
        await connection.disconnect()
    assert connection.status_code is not None, f"{method} {path} sent no response"
    return connection.status_code


async def ws_status(client, path: str, headers: dict[str, str]) -> int:
    """The handshake's HTTP status when refused (401, 429, ...), 101 when the socket was accepted."""
    try:
        async with client.websocket(path, headers=headers, scope_base=LOOPBACK) as ws:
            try:
                await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                pass  # accepted and waiting for us to speak
            except Exception as exc:  # noqa: BLE001 - the handler closing is fine; a refusal is re-raised below
                if isinstance(exc, WebsocketResponseError):
                    raise
            return 101 if ws.accepted else 0
    except WebsocketResponseError as exc:
        return exc.response.status_code


async def test_every_route_requires_the_key_unless_public(make_kernel):
    kernel = await make_kernel(config=f'api_key = "{KEY}"\n', plugins={"walklate": LatePlugin()})
    app = build_app(kernel)
    client = make_client(app)
    specs = app.config[ROUTE_SPECS_KEY]  # the app's endpoint names -> route declarations
    assert {"core", "walklate"} <= {s.plugin for s in specs.values()}

    # The app's URL map is what is really served: it includes anything registered on a blueprint
    # without a route declaration (the edge treats those as private, except the WebChat assets).
    targets = []
    for rule in app.url_map.iter_rules():
        spec = specs.get(rule.endpoint)
        methods = ["GET"] if rule.websocket else sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        for method in methods:
            public = spec.public if spec is not None else is_static_public(method, rule.rule)
            targets.append((rule.rule, method, bool(rule.websocket), public, spec.plugin if spec else "-"))
    declared = {(s.path, s.method) for s in specs.values()}
    assert declared <= {(path, method) for path, method, *_ in targets}  # nothing declared is missing

    failures: list[str] = []
    for template, method, is_ws, public, plugin in sorted(targets):
        path = concrete(template)
        label = f"{method} {template} [{plugin}]"
        if is_ws:
            without = await ws_status(client, path, {})
            with_key = await ws_status(client, path, GOOD)
        else:
            without = await http_status(client, method, path, {})
            with_key = await http_status(client, method, path, GOOD)
        if public:
            if without == 401:
                failures.append(f"{label}: public but 401 without a credential")
            continue
        if without != 401:
            failures.append(f"{label}: {without} without a credential (expected 401)")
        if with_key == 401:
            failures.append(f"{label}: still 401 with the key")
        if with_key == 500:  # a crash on an empty request: bad input must be a 4xx (502/503 upstream is fine)
            failures.append(f"{label}: 500 with the key and no body (bad input must be a 4xx)")
    assert len(targets) >= 15
    assert not failures, "\n".join(failures)


async def test_walk_also_covers_the_v1_prefix_and_wrong_keys(make_kernel):
    kernel = await make_kernel(config=f'api_key = "{KEY}"\n')
    client = make_client(build_app(kernel))
    for spec in kernel.routes.specs.values():
        if spec.public or spec.websocket or not spec.path.startswith("/api/"):
            continue
        path = "/api/v1/" + concrete(spec.path)[len("/api/"):]
        assert await http_status(client, spec.method, path, {}) == 401, path
        wrong = {"Authorization": f"Bearer {KEY}-wrong"}
        assert await http_status(client, spec.method, path, wrong) == 401, path
        assert await http_status(client, spec.method, path, {"X-API-Key": KEY}) != 401, path

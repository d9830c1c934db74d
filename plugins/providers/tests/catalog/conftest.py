"""Fixtures of the catalog and provider-API tests: an app with only the providers plugin, and a
scripted HTTP server on 127.0.0.1 standing in for Ollama, GitHub's device flow, catalog hosts and
OpenAI-compatible providers (real sockets, so the product's real HTTP client code runs)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from librefang.testing import make_client

Reply = tuple[int, dict[str, str], bytes]
Handler = Callable[["Seen"], Reply]


@dataclass
class Seen:
    """One request the fake server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.body.decode()))


def json_reply(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode()


@dataclass
class FakeServer:
    """Routes ``(METHOD, path)`` to handlers; records every request."""

    url: str = ""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, handler: Handler | Reply | Any) -> None:
        if not callable(handler):
            reply = handler if isinstance(handler, tuple) else json_reply(handler)
            self.routes[(method, path)] = lambda _seen, r=reply: r
        else:
            self.routes[(method, path)] = handler


def _handler_class(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?")[0]
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            server.seen.append(seen)
            handler = server.routes.get((self.command, path))
            status, headers, payload = handler(seen) if handler else json_reply({"error": "no route"}, 404)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A scripted HTTP server on a free 127.0.0.1 port."""
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def config_text() -> str:
    """config.toml of the test kernel (tests override this fixture or pass their own)."""
    return ""


@pytest.fixture
async def provider_kernel(make_kernel: Any, config_text: str) -> Any:
    """A started kernel with only the providers plugin loaded."""
    from librefang_providers import plugin

    return await make_kernel(plugins={"providers": plugin}, load_entry_points=False, config=config_text)


@pytest.fixture
def api(provider_kernel: Any) -> Any:
    """An in-process HTTP client (loopback peer) of an app with only the providers plugin."""
    from librefang.app import build_app

    return make_client(build_app(provider_kernel))

"""``web_fetch``: HTML to text from a local web server (opened through the allow-list), and the SSRF
rules — schemes, userinfo, blocked names, loopback/private/metadata addresses (IPv4-mapped IPv6 too),
redirects re-checked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from librefang_providers.api import ToolUseBlock
from librefang_runtime.tools import ToolContext, execute
from librefang_runtime.web_tools import html_to_text

PAGE = b"""<!doctype html><html><head><title>Test  Page</title><style>body{color:red}</style>
<script>alert('x')</script></head><body><h1>Hello</h1><p>First &amp; second.</p>
<ul><li>one</li><li>two</li></ul></body></html>"""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        routes = {
            "/page": (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE),
            "/plain": (200, {"Content-Type": "text/plain"}, b"just text"),
            "/big": (200, {"Content-Type": "text/plain"}, b"a" * 5000),
            "/to-page": (302, {"Location": "/page"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-localhost": (301, {"Location": "http://localhost/page"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
        }
        status, headers, body = routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def fetch(kernel: Any, url: str, agent_id: str = "") -> Any:
    runtime = kernel.services["runtime"]
    context = ToolContext(kernel=kernel, agent_id=agent_id, agent_name="", session_id="", workspace=None)
    outcome = await execute(runtime.tools, ToolUseBlock("w", "web_fetch", {"url": url}), context,
                            allowed={"web_fetch"}, policy=None, time_limit=10, max_chars=100_000)
    return outcome.result


def test_html_to_text() -> None:
    title, text = html_to_text(PAGE.decode())
    assert title == "Test Page"
    assert text == "Hello\n\nFirst & second.\n\n- one\n\n- two"
    assert "alert" not in text and "color" not in text


async def test_fetch_through_the_allow_list(start_runtime: Any, site: str) -> None:
    kernel, _ = await start_runtime('[runtime]\nweb_fetch_allowed_hosts = ["127.0.0.1/32"]\nweb_fetch_max_bytes = 1024\n')
    result = await fetch(kernel, site + "/page")
    assert not result.is_error, result.content
    assert result.content.startswith(f"URL: {site}/page\nStatus: 200\nTitle: Test Page\n")
    assert "First & second." in result.content and "alert" not in result.content
    redirected = await fetch(kernel, site + "/to-page")
    assert f"URL: {site}/page" in redirected.content and "Hello" in redirected.content
    assert (await fetch(kernel, site + "/plain")).content.endswith("\njust text")
    big = await fetch(kernel, site + "/big")
    assert "a" * 1024 in big.content and "a" * 1025 not in big.content and "cut at 1024 bytes" in big.content
    # redirects are checked again: metadata and blocked names stay refused even with an allow-list
    for path in ("/to-metadata", "/to-localhost"):
        refused = await fetch(kernel, site + path)
        assert refused.is_error and refused.content.startswith("refused:"), (path, refused.content)
    assert "more than 5 redirects" in (await fetch(kernel, site + "/loop")).content
    assert (await fetch(kernel, "http://169.254.169.254/")).is_error


REFUSED = [
    ("file:///etc/passwd", "scheme"),
    ("ftp://example.com/x", "scheme"),
    ("http://user:pw@example.com/", "credentials"),
    ("http://localhost:8080/", "blocked"),
    ("http://metadata.google.internal/", "blocked"),
    ("http://127.0.0.1:1/", "loopback"),
    ("http://[::1]:1/", "blocked"),
    ("http://[::ffff:127.0.0.1]:1/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://169.254.169.254/latest/", "blocked"),
    ("http://100.64.0.1/", "metadata"),
    ("http://0.0.0.0/", "blocked"),
]


async def test_ssrf_rules_by_default(runtime_env: Any) -> None:
    kernel, _ = runtime_env  # one kernel for every case: each is refused before any I/O
    for url, reason in REFUSED:
        result = await fetch(kernel, url)
        assert result.is_error and result.content.startswith("refused:") and reason in result.content, (url, result.content)


async def test_an_agent_fetches_only_hosts_of_its_network_capability(start_runtime: Any, spawn: Any, site: str) -> None:
    kernel, _ = await start_runtime('[runtime]\nweb_fetch_allowed_hosts = ["127.0.0.1/32"]\n')
    base = 'name = "{name}"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n[capabilities]\nnetwork = {network}\n'
    local = await spawn(kernel, "local", base.format(name="local", network='["127.0.0.1"]'))
    remote = await spawn(kernel, "remote", base.format(name="remote", network='["*.example.com"]'))
    assert not (await fetch(kernel, site + "/plain", local)).is_error
    refused = await fetch(kernel, site + "/plain", remote)
    assert refused.is_error and "not in this agent's capabilities.network" in refused.content

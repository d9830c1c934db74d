"""An error answered before the handler read the body must not break the keep-alive connection."""

from __future__ import annotations

import asyncio
import http.client

import pytest
from librefang.testing import start_live_server


@pytest.fixture
async def core_server(librefang_home, monkeypatch):
    monkeypatch.setenv("LIBREFANG_LOAD_PLUGINS", "")
    server = await asyncio.to_thread(start_live_server, librefang_home)
    yield server
    await asyncio.to_thread(server.stop)


def _post_then_get(port: int, rounds: int) -> int:
    failures = 0
    for _ in range(rounds):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            body = b'{"a": 1}'
            conn.request("POST", "/api/agents", body=body, headers={"Content-Type": "application/json"})
            first = conn.getresponse()
            first.read()
            assert first.status == 404
            conn.request("GET", "/api/health")  # same connection, sent at once
            second = conn.getresponse()
            second.read()
            failures += second.status != 200
        except (http.client.HTTPException, ConnectionError):
            failures += 1
        finally:
            conn.close()
    return failures


async def test_error_with_unread_body_keeps_the_connection_usable(core_server):
    port = int(core_server.url.rsplit(":", 1)[1])
    assert await asyncio.to_thread(_post_then_get, port, 400) == 0

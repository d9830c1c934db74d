"""Behaviour of the changes made for /api/health throughput (see docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from librefang.netutil import TRUST_CACHE_SIZE, ProxyTrust, has_forwarding_headers
from librefang.storage import Database
from sqlalchemy import event
from werkzeug.datastructures import Headers


async def test_health_check_shares_one_ping_and_reuses_it_briefly(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    await db.open()
    pings: list[str] = []
    event.listen(db.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: pings.append(statement) if statement == "SELECT 1" else None)
    try:
        results = await asyncio.gather(*(db.healthy() for _ in range(50)))
        assert results == [True] * 50
        assert len(pings) == 1  # fifty concurrent probes, one query
        assert await db.healthy() is True
        assert len(pings) == 1  # within max_age: no query
        assert await db.healthy(max_age=0) is True
        assert len(pings) == 2  # stale: a new query
    finally:
        await db.close()
    assert await db.healthy() is False  # a closed database is never reported healthy from the cache


async def test_health_check_reports_a_broken_database(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    db = Database(f"sqlite+aiosqlite:///{folder / 'h.db'}")
    await db.open()
    try:
        assert await db.healthy() is True
        await db.engine.dispose()
        (folder / "h.db").unlink()
        folder.rmdir()  # the file cannot be recreated: the next ping fails
        assert await db.healthy() is True  # still the cached answer
        assert await db.healthy(max_age=0) is False
        # aiosqlite's worker thread of the failed connect reports back through this loop: let it finish
        for _ in range(100):
            if not any("_connection_worker_thread" in t.name for t in threading.enumerate()):
                break
            await asyncio.sleep(0.05)
    finally:
        await db.close()


def test_forwarding_headers_found_in_any_case_and_mapping() -> None:
    assert has_forwarding_headers(Headers([("Host", "a"), ("X-Forwarded-For", "203.0.113.7")]))
    assert has_forwarding_headers(Headers([("FORWARDED", "for=203.0.113.7")]))
    assert has_forwarding_headers({"x-real-ip": "203.0.113.7"})
    assert has_forwarding_headers({"cf-connecting-ip": "203.0.113.7"})
    assert not has_forwarding_headers(Headers([("Host", "a"), ("X-Forwarded-Proto", "https")]))
    assert not has_forwarding_headers({})


def test_client_ip_reads_forwarding_headers_in_any_case() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    headers = Headers([("Host", "a"), ("X-Forwarded-For", "203.0.113.7, 10.1.2.3"), ("x-forwarded-for", "198.51.100.1")])
    assert trust.client_ip("127.0.0.1", headers) == "203.0.113.7"  # first header line, right-most untrusted hop
    assert trust.client_ip("127.0.0.1", Headers([("X-Real-IP", "198.51.100.9")])) == "198.51.100.9"
    assert trust.client_ip("127.0.0.1", {"forwarded": 'for="[2001:db8::1]:4711"'}) == "2001:db8::1"
    assert trust.client_ip("127.0.0.1", Headers([("X-Forwarded-For", "not-an-ip")])) == "127.0.0.1"
    assert trust.client_ip("192.0.2.5", headers) == "192.0.2.5"  # untrusted peer: headers ignored


def test_proxy_trust_answers_stay_right_past_the_cache_bound() -> None:
    trust = ProxyTrust(["10.0.0.0/8"])
    for i in range(TRUST_CACHE_SIZE + 1000):
        inside = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        outside = f"192.0.{i // 256 % 256}.{i % 256}"
        assert trust.trusts(inside) and not trust.trusts(outside)
        assert len(trust._trusted) <= TRUST_CACHE_SIZE
    assert not trust.trusts("garbage")


# -- the edge as ASGI middleware (see docs/benchmarks.md, "Microkernel and edge") ----------------------
def test_request_ids_are_canonical_distinct_uuid4() -> None:
    import uuid

    from librefang.edge import new_request_id

    seen = set()
    for _ in range(5000):
        rid = new_request_id()
        parsed = uuid.UUID(rid)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == rid
        seen.add(rid)
    assert len(seen) == 5000


async def test_the_edge_runs_no_quart_hook_and_routes_walk_no_blueprint(make_kernel) -> None:
    from librefang.app import build_app
    from librefang.edge import Edge
    from librefang.testing import make_client
    from quart import request

    kernel = await make_kernel(load_entry_points=False)
    app = build_app(kernel)
    assert isinstance(app.asgi_app, Edge)
    # Quart looks hooks up per request; with none registered, and no blueprint in the endpoint
    # names, that lookup stays as cheap as for a bare app.
    assert not any(app.before_request_funcs.values()) and not any(app.after_request_funcs.values())
    assert not app.blueprints
    seen = []

    @app.after_request  # test-only probe, registered after the build
    async def probe(response):
        seen.append((request.endpoint, request.blueprint))
        return response

    response = await make_client(app).get("/api/health")
    assert response.status_code == 200
    assert seen == [("core:health", None)]


async def test_metrics_histogram_is_cumulative_and_counts_every_request(make_kernel) -> None:
    from librefang.app import build_app
    from librefang.testing import make_client

    kernel = await make_kernel(load_entry_points=False)
    client = make_client(build_app(kernel))
    for _ in range(3):
        assert (await client.get("/api/health")).status_code == 200
    metrics = kernel.edge.metrics
    assert metrics.requests_total("GET", "/api/health", 200) == 3
    metrics.observe("GET", "/api/slow", 200, 7.0)  # lands in the 10 s bucket only
    text = (await (await client.get("/api/metrics")).get_data(as_text=True)).splitlines()
    assert 'librefang_http_request_duration_seconds_count{method="GET",route="/api/health"} 3.0' in text
    assert 'librefang_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/api/health"} 3.0' in text
    assert 'librefang_http_request_duration_seconds_bucket{le="5.0",method="GET",route="/api/slow"} 0.0' in text
    assert 'librefang_http_request_duration_seconds_bucket{le="10.0",method="GET",route="/api/slow"} 1.0' in text
    assert 'librefang_http_request_duration_seconds_sum{method="GET",route="/api/slow"} 7.0' in text


def test_prometheus_client_is_imported_only_when_metrics_are_scraped(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = """
import asyncio, sys
from librefang.app import build_app
from librefang.kernel import create_kernel
from librefang.testing import make_client

async def main():
    kernel = create_kernel(sys.argv[1], load_entry_points=False)
    await kernel.start()
    try:
        client = make_client(build_app(kernel))
        assert (await client.get("/api/health")).status_code == 200
        before = "prometheus_client" in sys.modules
        text = await (await client.get("/api/metrics")).get_data(as_text=True)
        print(before, "prometheus_client" in sys.modules, "librefang_http_requests_total" in text)
    finally:
        await kernel.stop()

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "LIBREFANG_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "True", "True"]

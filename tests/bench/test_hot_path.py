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

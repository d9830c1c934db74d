"""Usage rows of concurrent LLM calls share transactions (group commit): every row is committed
before its call returns, counted exactly once in the running totals, a bad row fails only its own
call, a cancelled caller's row is still written and counted; the same on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import pytest
import sqlalchemy as sa
from librefang_budget.models import usage
from librefang_budget.store import Windows

from .test_ledger import same


def llm_call(agent_id: str, tokens: int = 1000) -> dict[str, Any]:
    return {"agent_id": agent_id, "agent_name": "worker", "session_id": "s", "provider": "openai",
            "model": "fake-model", "usage": {"input_tokens": tokens, "output_tokens": tokens // 2},
            "latency_ms": 1.0, "tool_calls": 0}


async def stored_rows(kernel: Any) -> int:
    async with kernel.db.begin() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(usage))).scalar_one())


def usage_row(agent_id: Any, cost: float = 0.5) -> dict[str, Any]:
    return {"created_at": time.time(), "agent_id": agent_id, "agent_name": "w", "session_id": "s",
            "provider": "openai", "model": "fake-model", "input_tokens": 10, "output_tokens": 5,
            "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": cost, "priced": False,
            "tool_calls": 0, "latency_ms": 1.0}


@pytest.mark.parametrize("caps", ["", "[budget]\nmax_monthly_usd = 1000\n"])
async def test_concurrent_calls_share_transactions_and_are_counted_once(start: Any, caps: str) -> None:
    kernel, _ = await start(caps)
    service = kernel.services["budget"]
    if caps:  # the ledger holds the global scope: every row must reach it exactly once
        await service.check({"agent_id": "agent-0", "provider": "openai"})
        assert ("global", "") in service.ledger.totals
    before = service.writer.transactions
    rows = await asyncio.gather(*(service.meter(llm_call(f"agent-{i % 4}")) for i in range(40)))
    assert len(rows) == 40 and await stored_rows(kernel) == 40  # each committed before its call returned
    assert 1 <= service.writer.transactions - before < 40
    assert service.metered == 40
    if caps:
        w = Windows.at()
        same(await service.store.spend(w), service.ledger.totals[("global", "")].spend(w))


async def test_a_bad_row_fails_only_its_own_call(start: Any) -> None:
    kernel, _ = await start("[budget]\nmax_monthly_usd = 1000\n")
    ledger = kernel.services["budget"].ledger
    await kernel.services["budget"].check({"agent_id": "a", "provider": "openai"})  # global scope loaded
    results = await asyncio.gather(ledger.record(usage_row("a")), ledger.record(usage_row(None)),
                                   ledger.record(usage_row("b")), return_exceptions=True)
    assert results[0] is None and results[2] is None
    # agent_id is NOT NULL (raised by the driver itself on SQLite: the insert bypasses SQLAlchemy there)
    assert isinstance(results[1], (sa.exc.IntegrityError, sqlite3.IntegrityError))
    assert await stored_rows(kernel) == 2
    w = Windows.at()
    assert ledger.totals[("global", "")].spend(w).monthly == pytest.approx(1.0)
    same(await kernel.services["budget"].store.spend(w), ledger.totals[("global", "")].spend(w))


async def test_a_cancelled_callers_row_is_still_written_and_counted(start: Any, make_kernel: Any) -> None:
    kernel, _ = await start("[budget]\nmax_monthly_usd = 1000\n")
    service = kernel.services["budget"]
    await service.check({"agent_id": "a", "provider": "openai"})
    task = asyncio.ensure_future(service.ledger.record(usage_row("a", cost=2.0)))
    await asyncio.sleep(0)  # handed over to the writer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await service.drain()
    assert await stored_rows(kernel) == 1
    assert service.ledger.totals[("global", "")].spend(Windows.at()).monthly == pytest.approx(2.0)


async def test_a_cancelled_flush_leaves_no_caller_waiting(start: Any) -> None:
    kernel, _ = await start()
    service = kernel.services["budget"]
    callers = [asyncio.ensure_future(service.writer.add(usage_row("a"))) for _ in range(3)]
    await asyncio.sleep(0)  # the first row is being written, the others wait for the next batch
    service.writer._flusher.cancel()
    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 10)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert await stored_rows(kernel) <= 3
    await service.writer.add(usage_row("a"))  # the writer still works afterwards
    assert await stored_rows(kernel) >= 1


async def test_metering_on_postgres(start: Any, postgres_url: str) -> None:
    kernel, client = await start("[budget]\nmax_monthly_usd = 1000\n", top=f'database_url = "{postgres_url}"\n')
    service = kernel.services["budget"]
    assert service.ledger is None
    await asyncio.gather(*(service.meter(llm_call(f"agent-{i % 2}")) for i in range(10)))
    assert await stored_rows(kernel) == 10
    assert (await client.put("/api/budget", json={"max_monthly_usd": 0})).status_code == 200
    assert await service.caps_for("agent-0", "openai") == []  # uncapped: the rows go through the writer
    await asyncio.gather(*(service.meter(llm_call("agent-0")) for _ in range(10)))
    assert await stored_rows(kernel) == 20 and 1 <= service.writer.transactions < 10
    with pytest.raises(sa.exc.DBAPIError):  # a bad row fails its call on PostgreSQL too
        await service.writer.add(usage_row(None))
    spend = await service.store.spend(Windows.at())
    assert spend.monthly > 0 and spend.tokens_hour == 20 * 1500


async def test_the_caps_of_a_call_follow_every_change(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    service = kernel.services["budget"]
    agent_id = await spawn(kernel, "capped")

    async def windows() -> list[tuple[str, str, float]]:
        return sorted((c.scope, c.window, c.limit) for caps, _ in await service.caps_for(agent_id, "openai")
                      for c in caps)

    assert await windows() == []
    assert await service.caps_for(agent_id, "openai") is await service.caps_for(agent_id, "openai")  # kept
    assert (await client.put("/api/budget", json={"max_daily_usd": 5})).status_code == 200  # [budget] replaced
    assert await windows() == [("global", "daily", 5.0)]
    r = await client.put("/api/budget/providers/openai", json={"max_tokens_per_hour": 1000})
    assert r.status_code == 200, await r.get_json()
    assert await windows() == [("global", "daily", 5.0), ("provider", "tokens_hour", 1000.0)]
    r = await client.put(f"/api/budget/agents/{agent_id}", json={"max_cost_per_hour_usd": 2})  # stored override
    assert r.status_code == 200, await r.get_json()
    assert ("agent", "hourly", 2.0) in await windows()
    r = await client.put(f"/api/agents/{agent_id}/update", json={"manifest_toml": (
        'name = "capped"\n[model]\nprovider = "openai"\nmodel = "fake-model"\n[resources]\nmax_cost_per_day_usd = 7\n')})
    assert r.status_code == 200, await r.get_json()  # the manifest's [resources]: an agent.* event
    assert ("agent", "daily", 7.0) in await windows() and ("agent", "hourly", 2.0) in await windows()

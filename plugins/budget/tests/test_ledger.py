"""The running totals behind enforcement: no spend query per LLM call, exact with the usage table
(also with several agents at once), still enforced after a restart, rolled over at window boundaries."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import librefang_agents.plugin as agents_plugin
import librefang_budget.plugin as budget_plugin
import librefang_providers.plugin as providers_plugin
import librefang_runtime.plugin as runtime_plugin
import pytest
from librefang.app import build_app
from librefang.testing import make_client
from librefang_budget.ledger import Totals, units
from librefang_budget.store import Windows
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.fakes.llm_server import Script

MILLION = 1_000_000
PLUGINS = {"providers": providers_plugin, "agents": agents_plugin, "runtime": runtime_plugin, "budget": budget_plugin}


async def send(client: Any, agent_id: str) -> int:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "hi"})
    return response.status_code


def same(database: Any, memory: Any) -> None:
    """The totals equal the database's sums (to float rounding: one missing row would be far off)."""
    for window in ("hourly", "daily", "monthly"):
        assert getattr(memory, window) == pytest.approx(getattr(database, window), rel=1e-9, abs=1e-12), window
    assert memory.tokens_hour == database.tokens_hour


class UsageQueries:
    """Counts the SELECTs that read ``budget_usage`` (every engine, while active)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "budget_usage" in statement:
            self.count += 1

    def __enter__(self) -> UsageQueries:
        event.listen(Engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc: Any) -> None:
        event.remove(Engine, "before_cursor_execute", self)


async def test_capped_calls_read_no_spend_from_the_database(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_hourly_usd = 100\nmax_daily_usd = 100\nmax_monthly_usd = 100\n'
                                 '[budget.providers.openai]\nmax_cost_per_hour_usd = 100\nmax_tokens_per_hour = 10000000\n')
    agent_id = await spawn(kernel, "meter", "[resources]\nmax_cost_per_hour_usd = 50\nmax_llm_tokens_per_hour = 9000000\n")
    assert await send(client, agent_id) == 200  # the first call loads the three scopes
    service = kernel.services["budget"]
    assert service.ledger is not None and service.ledger.loads == 3
    with UsageQueries() as queries:
        for _ in range(4):
            assert await send(client, agent_id) == 200
    assert queries.count == 0
    assert service.ledger.loads == 3
    assert service.metered == 5
    # the views still read the database, and agree with the totals
    w = Windows.at()
    same(await service.store.spend(w, agent_id=agent_id), service.ledger.totals[("agent", agent_id)].spend(w))
    same(await service.store.spend(w), service.ledger.totals[("global", "")].spend(w))


async def test_spend_survives_a_restart(start: Any, spawn: Any, fake_llm: Any, make_kernel: Any) -> None:
    kernel, client = await start('[budget]\nmax_daily_usd = 1.5\n')
    agent_id = await spawn(kernel, "spender")
    fake_llm.script(Script(text="expensive", usage={"input": MILLION, "output": 200_000}))  # $1.60
    assert await send(client, agent_id) == 200
    await kernel.stop()
    again = await make_kernel(plugins=PLUGINS, load_entry_points=False)
    client = make_client(build_app(again))
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "hi"})
    body = await response.get_json()
    assert response.status_code == 429 and body["code"] == "budget_exceeded", body
    assert body["details"]["scope"] == "global" and body["details"]["spend"] == pytest.approx(1.6)
    assert len(fake_llm.requests) == 1


async def test_concurrent_agents_are_counted_exactly(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_monthly_usd = 1000\n')
    agents = [await spawn(kernel, f"worker{i}", "[resources]\nmax_cost_per_day_usd = 1000\n") for i in range(4)]
    service = kernel.services["budget"]
    assert await send(client, agents[0]) == 200  # global and agent 0 loaded; the rest load mid-flight
    statuses = await asyncio.gather(*(send(client, a) for a in agents for _ in range(3)))
    assert statuses == [200] * 12
    w = Windows.at()
    same(await service.store.spend(w), service.ledger.totals[("global", "")].spend(w))
    for agent_id in agents:
        same(await service.store.spend(w, agent_id=agent_id), service.ledger.totals[("agent", agent_id)].spend(w))
    assert service.ledger.totals[("global", "")].spend(w).monthly > 0


def test_totals_roll_over_at_window_boundaries() -> None:
    start = dt.datetime(2026, 1, 31, 23, 30, tzinfo=dt.UTC).timestamp()
    w = Windows.at(start)
    # loaded with one row 50 minutes ago (in the hour) and today's and this month's sums
    totals = Totals(w, daily=units(2.0), monthly=units(5.0), hour=[(start - 3000, units(1.0), 100)])
    totals.add(start, units(0.25), 10)
    assert totals.spend(w).hourly == 1.25 and totals.spend(w).tokens_hour == 110
    assert (totals.spend(w).daily, totals.spend(w).monthly) == (2.25, 5.25)
    # 45 minutes later (00:15 on 1 February): the older row left the rolling hour; a new day and month began at midnight
    later = Windows.at(start + 2700)
    spend = totals.spend(later)
    assert (spend.hourly, spend.tokens_hour, spend.daily, spend.monthly) == (0.25, 10, 0.0, 0.0)
    totals.add(start + 2700, units(0.5), 5)
    spend = totals.spend(later)
    assert (spend.hourly, spend.tokens_hour, spend.daily, spend.monthly) == (0.75, 15, 0.5, 0.5)
    # an hour after that, nothing is left in the rolling hour; the day and month keep their sums
    spend = totals.spend(Windows.at(start + 2700 + 3601))
    assert (spend.hourly, spend.tokens_hour, spend.daily, spend.monthly) == (0.0, 0, 0.5, 0.5)

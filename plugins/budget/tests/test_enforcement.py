"""Spending past a budget: metering of every call against the fake provider server, refusal before the
next call with 429 budget_exceeded, alerts once per period (bus + audit), and the pricing rules."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.fakes.llm_server import Script, ToolCall

MILLION = 1_000_000


async def audit_actions(kernel: Any) -> list[tuple[str, str]]:
    async with kernel.db.begin() as conn:
        rows = (await conn.execute(text("SELECT action, target FROM core_audit_entries ORDER BY seq"))).all()
    return [(r[0], r[1]) for r in rows if r[0].startswith("Budget")]


async def send(client: Any, agent_id: str, message: str = "hi") -> tuple[int, Any, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": message})
    return response.status_code, await response.get_json(), response.headers


async def test_agent_hourly_cap_refuses_the_next_call_unsent(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    agent_id = await spawn(kernel, "spender", "[resources]\nmax_cost_per_hour_usd = 1.5\n")
    events = kernel.bus.subscribe("budget.*")
    # fake-model is not in the catalog: fallback prices $1 in / $3 out per million -> $1.60
    fake_llm.script(Script(text="expensive", usage={"input": MILLION, "output": 200_000}))
    status, body, _ = await send(client, agent_id)
    assert status == 200, body
    status, body, headers = await send(client, agent_id)
    assert status == 429, body
    assert body["code"] == "budget_exceeded"
    assert "agent" in body["error"] and "$1.6000" in body["error"] and "hourly cap is $1.5000" in body["error"]
    assert body["details"]["scope"] == "agent" and body["details"]["window"] == "hourly"
    assert 3500 <= int(headers["Retry-After"]) <= 3601
    assert len(fake_llm.requests) == 1  # the refused call never reached the provider
    # a third attempt is refused as well, but the refusal is announced once per period
    status, _, _ = await send(client, agent_id)
    assert status == 429
    topics = []
    while not events.queue.empty():
        topics.append(events.queue.get_nowait().topic)
    assert topics == ["budget.alert", "budget.exceeded"]
    assert await audit_actions(kernel) == [("BudgetAlert", f"agent:{agent_id}"), ("BudgetExceeded", f"agent:{agent_id}")]
    usage = await (await client.get(f"/api/budget/agents/{agent_id}")).get_json()
    assert usage["hourly"] == {"spend": 1.6, "limit": 1.5, "pct": pytest.approx(1.6 / 1.5, rel=1e-5)}


async def test_every_call_of_a_tool_turn_is_metered_and_a_cap_stops_the_turn_midway(
        start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_daily_usd = 0.5\n')
    agent_id = await spawn(kernel, "looper")
    fake_llm.script(
        Script(tool_calls=[ToolCall("system_time", {}, id="t1")], usage={"input": 100_000, "output": 10_000}),
        Script(tool_calls=[ToolCall("system_time", {}, id="t2")], usage={"input": 400_000, "output": 10_000}),
        Script(text="never sent"),
    )
    status, body, _ = await send(client, agent_id)
    assert status == 429 and body["details"]["scope"] == "global" and body["details"]["window"] == "daily", body
    assert "the daemon spent $0.5600 today (UTC); the daily cap is $0.5000" in body["error"]
    assert len(fake_llm.requests) == 2
    summary = await (await client.get("/api/usage/summary")).get_json()
    assert summary == {"total_input_tokens": 500_000, "total_output_tokens": 20_000, "total_cost_usd": 0.56,
                       "call_count": 2, "total_tool_calls": 2}


async def test_provider_token_cap(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget.providers.openai]\nmax_tokens_per_hour = 1000\n')
    agent_id = await spawn(kernel, "chatty")
    fake_llm.script(Script(text="a", usage={"input": 600, "output": 300}), Script(text="b", usage={"input": 90, "output": 10}))
    assert (await send(client, agent_id))[0] == 200
    assert (await send(client, agent_id))[0] == 200  # 900 tokens < 1000: allowed, reaches 1000
    status, body, _ = await send(client, agent_id)
    assert status == 429 and "provider 'openai' used 1000 LLM tokens in the last hour; the cap is 1000" in body["error"]
    rows = (await (await client.get("/api/budget/providers")).get_json())["providers"]
    assert rows[0]["provider"] == "openai" and rows[0]["is_exhausted"] is True
    assert rows[0]["tokens_this_hour"] == 1000 and rows[0]["exhaustion_reason"] == "tokens-per-hour cap reached"


async def test_default_tokens_per_hour_and_an_api_override(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\ndefault_max_llm_tokens_per_hour = 100\n')
    agent_id = await spawn(kernel, "small")
    fake_llm.script(Script(text="a", usage={"input": 80, "output": 20}), Script(text="b", usage={"input": 1, "output": 1}))
    assert (await send(client, agent_id))[0] == 200
    assert (await send(client, agent_id))[0] == 429
    response = await client.put(f"/api/budget/agents/{agent_id}", json={"max_llm_tokens_per_hour": 10_000})
    assert response.status_code == 200, await response.get_json()
    assert (await send(client, agent_id))[0] == 200  # the override beats the default


async def test_cache_tokens_are_priced_from_the_catalog(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    haiku = await spawn(kernel, "haiku", toml=(
        'name = "haiku"\n[model]\nprovider = "anthropic"\nmodel = "claude-3-5-haiku-20241022"\n'))
    fake_llm.script(Script(text="x", usage={"input": MILLION, "output": 100_000, "cache_read": 200_000,
                                            "cache_write": 100_000}))
    status, body, _ = await send(client, haiku)
    assert status == 200, body
    # catalog: $0.8 in, $4 out, $0.08 cache read, $1.0 cache write per million
    expected = (700_000 * 0.8 + 200_000 * 0.08 + 100_000 * 1.0 + 100_000 * 4) / MILLION
    models = (await (await client.get("/api/usage/by-model")).get_json())["models"]
    assert models == [{"model": "claude-3-5-haiku-20241022", "total_cost_usd": pytest.approx(expected),
                       "total_input_tokens": MILLION, "total_output_tokens": 100_000, "call_count": 1}]


async def test_fallback_price_applies_the_reference_cache_discounts(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    # the Anthropic wire format carries cache writes too (OpenAI's only reports cached reads)
    agent_id = await spawn(kernel, "unpriced", toml='name = "unpriced"\n[model]\nprovider = "anthropic"\nmodel = "fake-model"\n')
    fake_llm.script(Script(text="x", usage={"input": MILLION, "output": MILLION, "cache_read": 500_000,
                                            "cache_write": 100_000}))
    assert (await send(client, agent_id))[0] == 200
    summary = await (await client.get("/api/usage/summary")).get_json()
    # regular 400k at $1 + 500k at $0.10 + 100k at $1.25 + 1M out at $3
    assert summary["total_cost_usd"] == pytest.approx(0.4 + 0.05 + 0.125 + 3.0)


async def test_without_the_budget_plugin_nothing_is_refused(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_hourly_usd = 0.000001\n', budget=False)
    agent_id = await spawn(kernel, "free")
    assert (await send(client, agent_id))[0] == 200
    assert (await send(client, agent_id))[0] == 200


async def test_a_streamed_turn_reports_the_refusal_as_an_error_event(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_hourly_usd = 0.1\n')
    agent_id = await spawn(kernel, "streamer")
    fake_llm.script(Script(text="first", usage={"input": 200_000, "output": 0}))
    assert (await send(client, agent_id))[0] == 200
    response = await client.post(f"/api/agents/{agent_id}/message/stream", json={"message": "again"})
    text_body = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert "event: error" in text_body and '"code": "budget_exceeded"' in text_body.replace('":"', '": "')
    assert "hourly cap is $0.1000" in text_body
    assert len(fake_llm.requests) == 1


async def test_an_unreadable_spend_fails_closed_with_503(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_daily_usd = 5\n')
    agent_id = await spawn(kernel, "blind")
    async with kernel.db.begin() as conn:  # the usage table disappears under the running daemon
        await conn.execute(text("ALTER TABLE budget_usage RENAME TO budget_usage_moved"))
    status, body, _ = await send(client, agent_id)
    assert status == 503 and body["code"] == "budget_check_failed", body
    assert len(fake_llm.requests) == 0


async def test_the_openai_compatible_api_answers_429_budget_exceeded(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_monthly_usd = 0.01\n')
    await spawn(kernel, "compat")
    fake_llm.script(Script(text="first", usage={"input": 20_000, "output": 0}))
    body = {"model": "librefang:compat", "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    response = await client.post("/v1/chat/completions", json=body)
    error = (await response.get_json())["error"]
    assert response.status_code == 429 and error["code"] == "budget_exceeded" and "monthly cap" in error["message"]
    assert len(fake_llm.requests) == 1

"""Budget and Usage routes over HTTP: shapes, persistence to config.toml, and bad input (400/404)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from librefang.ratelimit import route_cost

from tests.fakes.llm_server import Script

ROUTES = [("GET", "/api/budget"), ("PUT", "/api/budget"), ("GET", "/api/budget/agents"),
          ("GET", "/api/budget/agents/<agent_id>"), ("PUT", "/api/budget/agents/<agent_id>"),
          ("GET", "/api/budget/providers"), ("PUT", "/api/budget/providers/<provider_id>"),
          ("GET", "/api/usage"), ("GET", "/api/usage/summary"), ("GET", "/api/usage/by-model"),
          ("GET", "/api/usage/by-model/performance"), ("GET", "/api/usage/daily")]


async def test_routes_are_registered_with_auth_and_in_openapi(start: Any) -> None:
    kernel, client = await start()
    specs = {(s.method, s.path): s for s in kernel.routes.specs.values() if s.plugin == "budget"}
    assert set(specs) == set(ROUTES)
    assert not any(s.public for s in specs.values())
    assert all(s.cost == route_cost(s.method, s.path) for s in specs.values())  # the reference cost table
    paths = (await (await client.get("/api/openapi.json")).get_json())["paths"]
    assert {"/api/budget", "/api/usage/daily", "/api/budget/agents/{agent_id}"} <= set(paths)


async def test_the_routes_need_a_key_when_one_is_set(start: Any) -> None:
    _, client = await start(top='api_key = "budget-test-key-0123456789"\n')
    for method, path in [("GET", "/api/budget"), ("GET", "/api/usage"), ("PUT", "/api/budget")]:
        response = await client.open(path, method=method, json={})
        assert response.status_code == 401, path
    ok = await client.get("/api/budget", headers={"Authorization": "Bearer budget-test-key-0123456789"})
    assert ok.status_code == 200


async def test_empty_status_and_usage_views(start: Any) -> None:
    _, client = await start()
    budget = await (await client.get("/api/budget")).get_json()
    assert budget == {"hourly_spend": 0.0, "hourly_limit": 0.0, "hourly_pct": 0.0, "daily_spend": 0.0,
                      "daily_limit": 0.0, "daily_pct": 0.0, "monthly_spend": 0.0, "monthly_limit": 0.0,
                      "monthly_pct": 0.0, "alert_threshold": 0.8, "default_max_llm_tokens_per_hour": 0}
    assert await (await client.get("/api/usage")).get_json() == {"items": [], "total": 0, "offset": 0, "limit": 100}
    assert (await (await client.get("/api/usage/summary")).get_json())["call_count"] == 0
    daily = await (await client.get("/api/usage/daily")).get_json()
    assert len(daily["days"]) == 7 and daily["today_cost_usd"] == 0.0 and daily["first_event_date"] is None
    assert await (await client.get("/api/budget/providers")).get_json() == {"providers": [], "total": 0}


async def test_put_budget_persists_with_comments_and_accepts_aliases(start: Any) -> None:
    kernel, client = await start("# keep this comment\n[budget]\n# and this one\nmax_monthly_usd = 50.0\n")
    response = await client.put("/api/budget", json={"hourly_limit": 2, "max_daily_usd": 10.5, "daily_limit": 99,
                                                     "alert_threshold": 0.5, "hourly_spend": 123})
    body = await response.get_json()
    assert response.status_code == 200, body
    assert (body["hourly_limit"], body["daily_limit"], body["monthly_limit"], body["alert_threshold"]) == (2.0, 10.5, 50.0, 0.5)
    text = kernel.config.path.read_text()
    assert "# keep this comment" in text and "# and this one" in text
    saved = tomllib.loads(text)["budget"]
    assert saved == {"max_monthly_usd": 50.0, "max_hourly_usd": 2.0, "max_daily_usd": 10.5, "alert_threshold": 0.5}
    assert kernel.config.section("budget").max_daily_usd == 10.5  # live at once
    assert list((kernel.home / "backups").glob("config-*.toml"))
    # a GET body PUT back unchanged is accepted (read-modify-write)
    again = await client.put("/api/budget", json=body)
    assert again.status_code == 200 and await again.get_json() == body


BAD_BUDGETS = [
    {"max_hourly_usd": -1}, {"max_daily_usd": "5"}, {"monthly_limit": True}, {"alert_threshold": 1.5},
    {"alert_threshold": -0.1}, {"default_max_llm_tokens_per_hour": 1.5}, {"default_max_llm_tokens_per_hour": -3},
    {}, {"unknown": 1}, [1, 2], {"max_hourly_usd": 1e300},
]


async def test_put_budget_bad_input_is_400_and_writes_nothing(start: Any) -> None:
    kernel, client = await start()
    before = kernel.config.path.read_text()
    for payload in BAD_BUDGETS:
        response = await client.put("/api/budget", json=payload)
        body = await response.get_json()
        assert response.status_code == 400, (payload, body)
        assert body["code"] and body["request_id"] and body["error"]
    assert kernel.config.path.read_text() == before
    assert kernel.config.section("budget").max_hourly_usd == 0.0


async def test_put_budget_non_json_and_nan(start: Any) -> None:
    _, client = await start()
    response = await client.put("/api/budget", data="max_hourly_usd=1", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    response = await client.put("/api/budget", data='{"max_hourly_usd": NaN}', headers={"Content-Type": "application/json"})
    assert response.status_code == 400


async def test_agent_budget_routes(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    agent_id = await spawn(kernel, "ranked", "[resources]\nmax_cost_per_day_usd = 4.0\n")
    other = await spawn(kernel, "idle")
    fake_llm.script(Script(text="x", usage={"input": 500_000, "output": 0}))
    assert (await client.post(f"/api/agents/{agent_id}/message", json={"message": "hi"})).status_code == 200
    status = await (await client.get(f"/api/budget/agents/{agent_id}")).get_json()
    assert status["agent_name"] == "ranked"
    assert status["daily"] == {"spend": 0.5, "limit": 4.0, "pct": 0.125}
    assert status["tokens"]["used"] == 500_000 and status["tokens"]["limit"] == 0
    response = await client.put(f"/api/budget/agents/{other}", json={"max_cost_per_hour_usd": 0.25, "max_llm_tokens_per_hour": None})
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "ok"
    ranking = await (await client.get("/api/budget/agents")).get_json()
    assert ranking["total"] == 2
    assert [i["name"] for i in ranking["items"]] == ["ranked", "idle"]
    assert ranking["items"][0]["daily_cost_usd"] == 0.5 and ranking["items"][0]["daily_limit"] == 4.0
    assert ranking["items"][1]["hourly_limit"] == 0.25
    page = await (await client.get("/api/budget/agents?offset=1&limit=1")).get_json()
    assert [i["name"] for i in page["items"]] == ["idle"] and page["total"] == 2
    usage = await (await client.get("/api/usage")).get_json()
    assert usage["items"][0]["agent_id"] == agent_id and usage["items"][0]["input_tokens"] == 500_000
    assert usage["items"][0]["call_count"] == 1 and usage["items"][0]["cost"] == 0.5
    perf = (await (await client.get("/api/usage/by-model/performance")).get_json())["models"][0]
    assert perf["model"] == "fake-model" and perf["min_latency_ms"] > 0 and perf["cost_per_call"] == 0.5
    daily = await (await client.get("/api/usage/daily")).get_json()
    assert daily["today_cost_usd"] == 0.5 and daily["days"][-1]["calls"] == 1 and daily["first_event_date"]


async def test_agent_budget_bad_input(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    agent_id = await spawn(kernel, "target")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await client.get(f"/api/budget/agents/{unknown}")).status_code == 404
    assert (await client.get("/api/budget/agents/not-a-uuid")).status_code == 400
    assert (await client.put(f"/api/budget/agents/{unknown}", json={"max_cost_per_hour_usd": 1})).status_code == 404
    for payload in [{}, {"max_cost_per_hour_usd": -1}, {"max_cost_per_day_usd": "x"}, {"bogus": 1},
                    {"max_llm_tokens_per_hour": 0.5}, {"max_cost_per_hour_usd": None}]:
        response = await client.put(f"/api/budget/agents/{agent_id}", json=payload)
        assert response.status_code == 400, payload
    for query in ["limit=0", "limit=5000", "offset=-1", "limit=abc", "bogus=1"]:
        assert (await client.get(f"/api/budget/agents?{query}")).status_code == 400, query
        assert (await client.get(f"/api/usage?{query}")).status_code == 400, query


async def test_provider_budget_put_persists_and_validates(start: Any) -> None:
    kernel, client = await start()
    response = await client.put("/api/budget/providers/openai", json={"max_cost_per_day_usd": 3})
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["providers"][0]["cap_daily_usd"] == 3.0 and body["providers"][0]["unconfigured"] is False
    response = await client.put("/api/budget/providers/openai", json={"max_tokens_per_hour": 500})
    row = (await response.get_json())["providers"][0]
    assert (row["cap_daily_usd"], row["cap_tokens_per_hour"]) == (3.0, 500)  # partial: the daily cap stays
    saved = tomllib.loads(kernel.config.path.read_text())["budget"]["providers"]["openai"]
    assert saved == {"max_cost_per_day_usd": 3.0, "max_tokens_per_hour": 500}
    for path, payload in [("/api/budget/providers/openai", {}), ("/api/budget/providers/openai", {"x": 1}),
                          ("/api/budget/providers/openai", {"max_cost_per_hour_usd": -2}),
                          ("/api/budget/providers/bad%20id", {"max_cost_per_hour_usd": 1}),
                          ("/api/budget/providers/" + "a" * 80, {"max_cost_per_hour_usd": 1})]:
        response = await client.put(path, json=payload)
        assert response.status_code == 400, (path, payload)
    assert (await client.get("/api/budget/providers/openai")).status_code == 405


async def test_security_check_reports_the_real_configuration(start: Any) -> None:
    _, client = await start('[budget]\nmax_daily_usd = 7.5\nalert_threshold = 0.9\n')
    systems = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}
    budget = systems["budget"]
    assert budget["active"] is True and budget["plugin"] == "budget"
    assert budget["config"]["global_caps"]["max_daily_usd"] == 7.5 and budget["config"]["alert_threshold"] == 0.9
    assert budget["config"]["calls_metered"] == 0


async def test_bad_budget_config_stops_the_start_naming_the_key(make_kernel: Any) -> None:
    import librefang_budget.plugin as budget_plugin
    from librefang.errors import ConfigError

    with pytest.raises(ConfigError, match=r"budget\.alert_threshold"):
        await make_kernel(plugins={"budget": budget_plugin}, load_entry_points=False,
                          config="[budget]\nalert_threshold = 2\n")


async def test_budget_alone_serves_its_api(make_kernel: Any) -> None:
    """Without the runtime and the agents plugin: usage views work, agent views say why they cannot."""
    import librefang_budget.plugin as budget_plugin
    from librefang.app import build_app
    from librefang.testing import make_client

    kernel = await make_kernel(plugins={"budget": budget_plugin}, load_entry_points=False)
    client = make_client(build_app(kernel))
    assert (await client.get("/api/budget")).status_code == 200
    assert (await client.get("/api/usage/daily")).status_code == 200
    response = await client.get("/api/budget/agents/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 503 and (await response.get_json())["code"] == "agents_unavailable"
    report = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}["budget"]
    assert report["active"] is False  # nothing offers before_llm_call: no call is capped


async def test_provider_put_into_inline_tables_and_a_hand_broken_file(start: Any) -> None:
    kernel, client = await start('[budget]\nproviders = { groq = { max_cost_per_day_usd = 1.0 } }\n')
    response = await client.put("/api/budget/providers/openai", json={"max_cost_per_hour_usd": 2})
    assert response.status_code == 200, await response.get_json()
    response = await client.put("/api/budget/providers/groq", json={"max_tokens_per_hour": 9})
    assert response.status_code == 200, await response.get_json()
    saved = tomllib.loads(kernel.config.path.read_text())["budget"]["providers"]
    assert saved == {"groq": {"max_cost_per_day_usd": 1.0, "max_tokens_per_hour": 9},
                     "openai": {"max_cost_per_hour_usd": 2.0}}
    kernel.config.path.write_text(kernel.config.path.read_text() + "\n[broken\n")
    response = await client.put("/api/budget", json={"max_daily_usd": 1})
    assert response.status_code == 409 and (await response.get_json())["code"] == "config_unparsable"


async def test_api_module_gives_other_plugins_the_service(start: Any) -> None:
    from librefang_budget.api import service

    kernel, _ = await start('[budget]\nmax_hourly_usd = 3\n')
    status = await service(kernel).global_status()
    assert status["hourly_limit"] == 3.0 and status["hourly_spend"] == 0.0


async def test_status_shows_the_budget(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[budget]\nmax_daily_usd = 2\n')
    agent_id = await spawn(kernel, "status")
    fake_llm.script(Script(text="x", usage={"input": 500_000, "output": 0}))
    assert (await client.post(f"/api/agents/{agent_id}/message", json={"message": "hi"})).status_code == 200
    budget = (await (await client.get("/api/status")).get_json())["budget"]
    assert budget == {"alert_threshold": 0.8, "hourly_spend_usd": 0.5, "hourly_limit_usd": None,
                      "hourly_spend_percent": None, "daily_spend_usd": 0.5, "daily_limit_usd": 2.0,
                      "daily_spend_percent": 25.0, "monthly_spend_usd": 0.5, "monthly_limit_usd": None,
                      "monthly_spend_percent": None}

"""GET /api/agents filters, sorting and pagination; the bulk endpoints; status_info."""

from __future__ import annotations

import uuid


async def _fleet(client, spawn):
    ids = {}
    for name, desc in [("delta", "Writes REPORTS"), ("alpha", "reads mail"), ("charlie", "100% useful"),
                       ("bravo", "under_score")]:
        toml = f'name = "{name}"\ndescription = "{desc}"\n'
        ids[name] = await spawn(client, name, toml=toml)
    await client.put(f"/api/agents/{ids['bravo']}/suspend")
    return ids


async def test_list_filters_sorts_and_paginates(client, spawn, agents_kernel):
    ids = await _fleet(client, spawn)
    body = await (await client.get("/api/agents")).get_json()
    assert set(body) == {"items", "total", "offset", "limit"}
    assert body["total"] == 5 and body["offset"] == 0 and body["limit"] == 50
    assert [i["name"] for i in body["items"]] == ["alpha", "assistant", "bravo", "charlie", "delta"]
    desc = await (await client.get("/api/agents?sort=name&order=desc&limit=2")).get_json()
    assert [i["name"] for i in desc["items"]] == ["delta", "charlie"] and desc["total"] == 5 and desc["limit"] == 2
    page2 = await (await client.get("/api/agents?limit=2&offset=2")).get_json()
    assert [i["name"] for i in page2["items"]] == ["bravo", "charlie"] and page2["offset"] == 2
    created = await (await client.get("/api/agents?sort=created_at")).get_json()
    assert [i["name"] for i in created["items"]] == ["assistant", "delta", "alpha", "charlie", "bravo"]
    # q: case-insensitive substring of name or description; % and _ are literal
    assert [i["name"] for i in (await (await client.get("/api/agents?q=reports")).get_json())["items"]] == ["delta"]
    assert [i["name"] for i in (await (await client.get("/api/agents?q=ALPH")).get_json())["items"]] == ["alpha"]
    assert [i["name"] for i in (await (await client.get("/api/agents?q=100%25")).get_json())["items"]] == ["charlie"]
    assert [i["name"] for i in (await (await client.get("/api/agents?q=s_m")).get_json())["items"]] == []
    suspended = await (await client.get("/api/agents?status=suspended")).get_json()
    assert [i["id"] for i in suspended["items"]] == [ids["bravo"]] and suspended["total"] == 1
    running = await (await client.get("/api/agents?status=Running&sort=state")).get_json()
    assert running["total"] == 4
    by_state = await (await client.get("/api/agents?sort=state")).get_json()
    assert by_state["items"][-1]["name"] == "bravo"  # Running < Suspended
    await agents_kernel.services["agents"].touch(ids["charlie"])
    active = await (await client.get("/api/agents?sort=last_active&order=desc&limit=1")).get_json()
    assert active["items"][0]["name"] == "charlie"
    zero = await (await client.get("/api/agents?limit=0")).get_json()
    assert zero["items"] == [] and zero["total"] == 5
    clamped = await (await client.get("/api/agents?limit=100000")).get_json()
    assert clamped["limit"] == 500
    item = next(i for i in body["items"] if i["name"] == "alpha")
    assert item["model_provider"] == "auto" and item["state"] == "Running" and item["description"] == "reads mail"


async def test_list_bad_query_is_400(client):
    for query, code in [("sort=size", "invalid_sort"), ("order=up", "invalid_order"), ("status=zombie", "invalid_status"),
                        ("limit=-1", "invalid_query"), ("limit=ten", "invalid_query"), ("offset=-5", "invalid_query"),
                        ("q=" + "x" * 201, "invalid_query")]:
        response = await client.get(f"/api/agents?{query}")
        assert response.status_code == 400, query
        assert (await response.get_json())["code"] == code, query


async def test_default_model_is_resolved_in_views(start_agents, spawn):
    _kernel, client = await start_agents(config='[default_model]\nprovider = "groq"\nmodel = "llama-3.3-70b"\n')
    assistant = (await (await client.get("/api/agents?q=assistant")).get_json())["items"][0]
    assert assistant["model_provider"] == "groq" and assistant["model_name"] == "llama-3.3-70b"
    detail = await (await client.get(f"/api/agents/{assistant['id']}")).get_json()
    assert detail["model"]["provider"] == "groq" and detail["model"]["configured_provider"] == "default"
    own = await spawn(client, "own")
    assert (await (await client.get(f"/api/agents/{own}")).get_json())["model"]["provider"] == "openai"


async def test_bulk_create(client, hello):
    agents = [{"manifest_toml": hello.format(name=f"bulk-{i}")} for i in range(3)]
    agents.append({"manifest_toml": hello.format(name="bulk-0")})  # duplicate
    agents.append({"template": "nope"})
    response = await client.post("/api/agents/bulk", json={"agents": agents})
    assert response.status_code == 200
    body = await response.get_json()
    assert (body["total"], body["succeeded"], body["failed"]) == (5, 3, 2)
    assert [r["success"] for r in body["results"]] == [True, True, True, False, False]
    assert body["results"][3]["code"] == "agent_already_exists" and body["results"][4]["code"] == "template_not_found"
    assert body["results"][0]["name"] == "bulk-0" and uuid.UUID(body["results"][0]["agent_id"])
    for bad in ({"agents": []}, {"agents": [{"template": "coder"}] * 51}, {"agents": "x"}, {},
                {"agents": [{"bogus": 1}]}):
        assert (await client.post("/api/agents/bulk", json=bad)).status_code == 400


async def test_bulk_delete_start_stop(client, spawn):
    a, b = await spawn(client, "one"), await spawn(client, "two")
    stop = await (await client.post("/api/agents/bulk/stop", json={"agent_ids": [a, b, "junk"]})).get_json()
    assert (stop["succeeded"], stop["failed"]) == (2, 1)
    assert stop["results"][2]["code"] == "invalid_agent_id" and stop["results"][0]["status"] == "suspended"
    assert (await (await client.get(f"/api/agents/{a}")).get_json())["state"] == "Suspended"
    start = await (await client.post("/api/agents/bulk/start", json={"agent_ids": [a, str(uuid.uuid4())]})).get_json()
    assert (start["succeeded"], start["failed"]) == (1, 1) and start["results"][1]["code"] == "agent_not_found"
    assert (await (await client.get(f"/api/agents/{a}")).get_json())["state"] == "Running"
    deleted = await (await client.delete("/api/agents/bulk", json={"agent_ids": [a, b, a]})).get_json()
    assert [r["status"] for r in deleted["results"]] == ["killed", "killed", "already-deleted"]
    assert (await client.get(f"/api/agents/{b}")).status_code == 404
    for route, method in [("/api/agents/bulk", "DELETE"), ("/api/agents/bulk/start", "POST"),
                          ("/api/agents/bulk/stop", "POST")]:
        for bad in ({"agent_ids": []}, {"agent_ids": [a] * 51}, {"ids": [a]}, {"agent_ids": [1]}):
            response = await client.open(route, method=method, json=bad)
            assert response.status_code == 400, (route, bad)


async def test_status_counts_agents(client, spawn):
    status = await (await client.get("/api/status")).get_json()
    assert status["agent_count"] == 1 and status["active_agent_count"] == 1
    agent_id = await spawn(client, "counted")
    await client.put(f"/api/agents/{agent_id}/suspend")
    status = await (await client.get("/api/status")).get_json()
    assert status["agent_count"] == 2 and status["active_agent_count"] == 1


async def test_spawn_and_kill_publish_events_and_audit(client, spawn, agents_kernel):
    with agents_kernel.bus.subscribe("agent.*") as events:
        agent_id = await spawn(client, "watched")
        await client.delete(f"/api/agents/{agent_id}")
        topics = [events.queue.get_nowait() for _ in range(2)]
    assert [e.topic for e in topics] == ["agent.spawned", "agent.killed"]
    assert all(e.data["agent_id"] == agent_id and e.data["name"] == "watched" for e in topics)
    entries, _ = await agents_kernel.audit.recent(50)
    actions = [(e["action"], e["target"]) for e in entries]
    assert ("AgentSpawn", agent_id) in actions and ("AgentKill", agent_id) in actions
    spawn_entry = next(e for e in entries if e["action"] == "AgentSpawn" and e["target"] == agent_id)
    assert spawn_entry["request_id"] and spawn_entry["actor"]
    assert (await agents_kernel.audit.verify()).valid


async def test_changes_and_their_audit_entries_commit_together(client, spawn, agents_kernel, hello):
    """Concurrent spawns (one duplicate), mode changes and kills: every change that happened has
    exactly one audit entry, one that did not (a duplicate name, a second kill) has none."""
    import asyncio

    names = [f"together-{i}" for i in range(12)] + ["together-3"]
    responses = await asyncio.gather(
        *(client.post("/api/agents", json={"manifest_toml": hello.format(name=n)}) for n in names))
    assert sorted(r.status_code for r in responses) == [201] * 12 + [409]
    ids = [(await r.get_json())["agent_id"] for r in responses if r.status_code == 201]
    modes = await asyncio.gather(*(client.put(f"/api/agents/{i}/mode", json={"mode": "observe"}) for i in ids))
    assert {r.status_code for r in modes} == {200}
    kills = await asyncio.gather(*(client.delete(f"/api/agents/{ids[0]}") for _ in range(3)))
    statuses = [(await k.get_json())["status"] for k in kills]
    assert sorted(statuses) == ["already-deleted", "already-deleted", "killed"]
    entries, _ = await agents_kernel.audit.recent(200)
    ours = [(e["action"], e["target"]) for e in entries if e["target"] in ids]
    assert sorted(a for a, _ in ours) == ["AgentKill"] + ["AgentModeChange"] * 12 + ["AgentSpawn"] * 12
    assert len(set(ours)) == len(ours)  # one entry per change and agent
    assert (await agents_kernel.audit.verify()).valid


async def test_agent_limit(start_agents, spawn, hello):
    _kernel, client = await start_agents(config="[agents]\nmax_agents = 2\n")
    await spawn(client, "second")
    response = await client.post("/api/agents", json={"manifest_toml": hello.format(name="third")})
    assert response.status_code == 409 and (await response.get_json())["code"] == "agent_limit_reached"


async def test_concurrent_spawns_are_group_committed_and_names_stay_unique(client, hello, agents_kernel):
    import asyncio

    bodies = [{"manifest_toml": hello.format(name=f"burst-{i % 10}")} for i in range(30)]
    responses = await asyncio.gather(*(client.post("/api/agents", json=b) for b in bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 10 and statuses.count(409) == 20
    listing = await (await client.get("/api/agents?q=burst-&limit=100")).get_json()
    assert sorted(i["name"] for i in listing["items"]) == [f"burst-{i}" for i in range(10)]
    # the index and the table agree
    service = agents_kernel.services["agents"]
    await service.store.load()
    again = await (await client.get("/api/agents?q=burst-&limit=100")).get_json()
    assert again["items"] == listing["items"]

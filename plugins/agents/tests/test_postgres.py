"""The agent registry on PostgreSQL (the shared-database mode, every query through Database.run's
``run_sync`` path): runs when ``LIBREFANG_TEST_POSTGRES_URL`` points at a server (as the core's
storage tests), skipped otherwise."""

from __future__ import annotations

import asyncio
from typing import Any


async def test_registry_on_postgres(start_agents: Any, hello: str, postgres_url: str) -> None:
    config = f'database_url = "{postgres_url}"\n'
    kernel, client = await start_agents(config)
    assert not kernel.db.is_sqlite and kernel.services["agents"].store.shared
    names = [f"pg-{i}" for i in range(20)] + ["pg-3"]  # the last one is a duplicate
    responses = await asyncio.gather(
        *(client.post("/api/agents", json={"manifest_toml": hello.format(name=n)}) for n in names))
    assert sorted(r.status_code for r in responses) == [201] * 20 + [409]
    listing = await (await client.get("/api/agents?q=pg-1&sort=name")).get_json()
    assert [i["name"] for i in listing["items"]] == ["pg-1", *(f"pg-{i}" for i in range(10, 20))]
    victim = listing["items"][0]["id"]
    assert (await client.put(f"/api/agents/{victim}/mode", json={"mode": "observe"})).status_code == 200
    other = listing["items"][1]["id"]
    assert (await client.delete(f"/api/agents/{other}")).status_code == 200
    await kernel.stop()

    kernel, client = await start_agents(config)
    body = await (await client.get("/api/agents?q=pg-&limit=100")).get_json()
    assert body["total"] == 19
    assert (await (await client.get(f"/api/agents/{victim}")).get_json())["mode"] == "observe"
    assert (await client.get(f"/api/agents/{other}")).status_code == 404
    spawned = [e for e in (await kernel.audit.recent(200))[0] if e["action"] == "AgentSpawn"]
    assert len([e for e in spawned if '"pg-' in e["detail"]]) == 20
    assert (await kernel.audit.verify()).valid

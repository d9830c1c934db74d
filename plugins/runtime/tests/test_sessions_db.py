"""Sessions created on first use (``SessionStore.ensure``): one write-first transaction on SQLite and on
PostgreSQL (which runs when ``LIBREFANG_TEST_POSTGRES_URL`` points at a server, skipped otherwise)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any


async def check_sessions_created_on_first_use(kernel: Any, client: Any, spawn: Any) -> None:
    store = kernel.services["runtime"].store
    agent = await spawn(kernel, "first-use")
    other = await spawn(kernel, "other-agent")
    session = str(uuid.uuid4())

    # Concurrent first uses of one id: one row, owned by the first agent; every call sees that row.
    infos = await asyncio.gather(*(store.ensure(session, agent) for _ in range(8)))
    assert {(i.id, i.agent_id, i.message_count) for i in infos} == {(session, agent, 0)}
    assert (await store.ensure(session, other)).agent_id == agent  # an existing session is kept as it is

    # Through the API: a pinned new session is created by the turn and then holds the turn.
    fresh = str(uuid.uuid4())
    response = await client.post(f"/api/agents/{agent}/message", json={"message": "hi", "session_id": fresh})
    assert response.status_code == 200, await response.get_data()
    assert (await response.get_json())["response"]
    found = await store.get(fresh)
    assert found is not None and found.agent_id == agent and found.message_count == 2
    refused = await client.post(f"/api/agents/{other}/message", json={"message": "hi", "session_id": fresh})
    assert refused.status_code == 400


async def test_sessions_created_on_first_use_sqlite(runtime_env: tuple[Any, Any], spawn: Any) -> None:
    kernel, client = runtime_env
    await check_sessions_created_on_first_use(kernel, client, spawn)


async def test_sessions_created_on_first_use_postgres(start_runtime: Any, spawn: Any, postgres_url: str) -> None:
    kernel, client = await start_runtime(database_url=postgres_url)
    assert not kernel.db.is_sqlite
    await check_sessions_created_on_first_use(kernel, client, spawn)

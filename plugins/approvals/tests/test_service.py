"""The service without HTTP: a decision written by another process is seen by a waiting call, the
sweeper times out requests nobody waits for, retention trims old decisions, and the plugin runs
without the runtime and agents plugins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import librefang_approvals.plugin as approvals_plugin
import sqlalchemy as sa
from librefang.app import build_app
from librefang.testing import make_client
from librefang_approvals.api import approvals
from librefang_approvals.models import requests


async def test_a_decision_made_by_another_process_reaches_the_waiting_call(start: Any) -> None:
    kernel, _ = await start()
    service = approvals(kernel)
    request = await service.create(agent_id="a1", agent_name="a1", tool_name="shell_exec", session_id="s")
    waiter = asyncio.ensure_future(service.wait(request["id"], 10))
    await asyncio.sleep(0.1)
    # Another daemon sharing the database decides: only the row changes, no in-process future is set.
    async with kernel.db.begin() as conn:
        await conn.execute(sa.update(requests).where(requests.c.id == request["id"])
                           .values(status="approved", decided_at=time.time(), decided_by="api:other-process"))
    started = time.monotonic()
    decision = await asyncio.wait_for(waiter, 5)
    assert decision.status == "approved" and decision.decided_by == "api:other-process"
    assert time.monotonic() - started < 2.5


async def test_the_sweeper_times_out_requests_nobody_waits_for(start: Any) -> None:
    kernel, client = await start("[approval]\ntimeout_secs = 5\n")
    service = approvals(kernel)
    events = kernel.bus.subscribe("approval.resolved")
    manual = await service.create(agent_id="a1", agent_name="a1", tool_name="shell_exec", session_id=None)
    fresh_clock = service.clock
    assert await service.expire_overdue() == 0
    service.clock = lambda: fresh_clock() + 6
    assert await service.expire_overdue() == 1
    row = await service.get(manual["id"])
    assert row["status"] == "timed_out" and row["decided_by"] == "system"
    assert events.queue.get_nowait().data["id"] == manual["id"]
    assert (await client.post(f"/api/approvals/{manual['id']}/approve", json={})).status_code == 409


async def test_retention_trims_old_decisions_only(start: Any) -> None:
    kernel, _ = await start()
    service = approvals(kernel)
    old = await service.create(agent_id="a1", agent_name="a1", tool_name="file_write", session_id=None)
    waiting = await service.create(agent_id="a1", agent_name="a1", tool_name="file_write", session_id=None)
    await service.decide(old["id"], "reject", by="test")
    now = service.clock
    service.clock = lambda: now() + 91 * 86_400
    assert await service.trim(0) == 0
    assert await service.trim(90) == 1
    assert (await service.get(waiting["id"]))["status"] == "pending"


async def test_the_plugin_runs_without_runtime_and_agents(make_kernel: Any) -> None:
    kernel = await make_kernel(plugins={"approvals": approvals_plugin}, load_entry_points=False)
    assert kernel.plugins.records["approvals"].error is None
    client = make_client(build_app(kernel))
    assert (await (await client.get("/api/approvals/count")).get_json()) == {"pending": 0}
    response = await client.post("/api/approvals", json={"agent_id": "x", "tool_name": "shell_exec"})
    assert response.status_code == 503 and (await response.get_json())["code"] == "agents_unavailable"
    assert (await client.get("/api/approvals/totp/status")).status_code == 200
    systems = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}
    assert systems["tool_approvals"]["active"] is False  # nothing calls the gate without the runtime
    assert systems["tool_approvals"]["config"]["hooked_into_runtime"] is False

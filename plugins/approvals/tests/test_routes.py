"""Approval endpoints: create, list, get, decide, batch (atomic), session decisions, count, audit;
approving twice is 409, unknown ids 404, bad input 400; bus events, audit chain and security report."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any


async def create(client: Any, agent_id: str, tool: str = "shell_exec", session_id: str | None = None,
                 summary: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"agent_id": agent_id, "tool_name": tool, "description": "please", "action_summary": summary}
    if session_id:
        body["session_id"] = session_id
    response = await client.post("/api/approvals", json=body)
    data = await response.get_json()
    assert response.status_code == 201, data
    return data


async def test_create_get_list_count_and_decide(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "alice")
    events = kernel.bus.subscribe("approval.*")
    first = await create(client, agent, summary="rm -rf build sk-live-0123456789abcdef")
    assert first["status"] == "pending" and first["agent_name"] == "alice" and first["risk_level"] == "critical"
    assert "sk-live-0123456789abcdef" not in first["action_summary"]  # credential shapes are scrubbed
    second = await create(client, agent, tool="file_write")
    assert (await (await client.get("/api/approvals/count")).get_json()) == {"pending": 2}

    got = await (await client.get(f"/api/approvals/{first['id']}")).get_json()
    assert got["id"] == first["id"] and got["action"] == got["action_summary"]

    response = await client.post(f"/api/approvals/{first['id']}/approve", json={})
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "approved" and body["decided_at"] and body["decided_by"] == "api:local"

    # Approving twice, or rejecting what was approved: 409, and the first decision stands.
    again = await client.post(f"/api/approvals/{first['id']}/approve", json={})
    assert again.status_code == 409 and (await again.get_json())["code"] == "approval_already_resolved"
    assert (await client.post(f"/api/approvals/{first['id']}/reject")).status_code == 409
    assert (await client.post(f"/api/approvals/{first['id']}/modify", json={"feedback": "x"})).status_code == 409
    assert (await (await client.get(f"/api/approvals/{first['id']}")).get_json())["status"] == "approved"

    # Reviewers racing on one request: exactly one decision wins, the others get 409.
    raced = await create(client, agent)
    attempts = [client.post(f"/api/approvals/{raced['id']}/approve", json={}) for _ in range(4)]
    attempts += [client.post(f"/api/approvals/{raced['id']}/reject") for _ in range(4)]
    outcomes = sorted(r.status_code for r in await asyncio.gather(*attempts))
    assert outcomes == [200] + [409] * 7
    resolved_events = [e for e in kernel.bus.history if e.topic == "approval.resolved" and e.data["id"] == raced["id"]]
    assert len(resolved_events) == 1
    await client.post("/api/approvals/batch", json={"ids": [raced["id"]], "decision": "reject"})  # 409, ignored

    modified = await client.post(f"/api/approvals/{second['id']}/modify", json={"feedback": "use /tmp instead"})
    assert (await modified.get_json())["status"] == "modified"
    assert (await (await client.get("/api/approvals/count")).get_json()) == {"pending": 0}

    listing = await (await client.get("/api/approvals?limit=1")).get_json()
    assert listing["total"] == 3 and len(listing["approvals"]) == 1 and listing["limit"] == 1
    pending_only = await (await client.get("/api/approvals?status=pending")).get_json()
    assert pending_only["total"] == 0

    topics = []
    while not events.queue.empty():
        event = events.queue.get_nowait()
        if event.data["id"] != raced["id"]:
            topics.append((event.topic, event.data["id"], event.data["status"]))
    assert topics == [("approval.requested", first["id"], "pending"), ("approval.requested", second["id"], "pending"),
                      ("approval.resolved", first["id"], "approved"), ("approval.resolved", second["id"], "modified")]
    entries, _ = await kernel.audit.recent(50)
    resolved = [e for e in entries if e["action"] == "ApprovalResolved"]
    assert {(e["target"], e["outcome"]) for e in resolved if e["target"] != raced["id"]} == \
        {(first["id"], "approved"), (second["id"], "modified")}
    assert sum(e["target"] == raced["id"] for e in resolved) == 1
    assert (await kernel.audit.verify()).valid


async def test_unknown_and_invalid_ids_and_bad_bodies(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "bob")
    unknown = str(uuid.uuid4())
    for method, path, body in [("GET", f"/api/approvals/{unknown}", None),
                               ("POST", f"/api/approvals/{unknown}/approve", {}),
                               ("POST", f"/api/approvals/{unknown}/reject", None),
                               ("POST", f"/api/approvals/{unknown}/modify", {"feedback": "x"})]:
        response = await client.open(path, method=method, json=body)
        assert response.status_code == 404, path
        assert (await response.get_json())["code"] == "approval_not_found"
    assert (await client.get("/api/approvals/not-a-uuid")).status_code == 400
    assert (await client.post("/api/approvals/../approve", json={})).status_code in (400, 404)
    bad = [
        ("/api/approvals", {"agent_id": agent, "tool_name": "shell_exec", "surprise": 1}),  # strict body
        ("/api/approvals", {"tool_name": "shell_exec"}),
        ("/api/approvals", {"agent_id": agent, "tool_name": "rm -rf /"}),
        ("/api/approvals", {"agent_id": agent, "tool_name": "x", "description": "d" * 5000}),
        ("/api/approvals", {"agent_id": "not-an-agent-id", "tool_name": "shell_exec"}),
        ("/api/approvals/batch", {"ids": [], "decision": "approve"}),
        ("/api/approvals/batch", {"ids": [unknown] * 101, "decision": "approve"}),
        ("/api/approvals/batch", {"ids": [unknown], "decision": "maybe"}),
        ("/api/approvals/batch", {"ids": ["nope"], "decision": "approve"}),
        (f"/api/approvals/{unknown}/modify", {"feedback": ""}),
        (f"/api/approvals/{unknown}/approve", {"totp_code": 123456}),
        ("/api/approvals/session/s1/approve_all", {"expected_count": -1}),
        ("/api/approvals/session/s1/approve_all", {"expected_ids": "all"}),
        ("/api/approvals/session/" + "s" * 65 + "/approve_all", {}),
        ("/api/approvals/session/" + "s" * 65 + "/reject_all", None),
        ("/api/approvals/totp/confirm", {"code": ""}),
        ("/api/approvals/totp/confirm", {}),
        ("/api/approvals/totp/setup", {"current_code": "x" * 65}),
    ]
    for path, body in bad:
        response = await client.post(path, json=body)
        data = await response.get_json()
        assert response.status_code == 400, (path, body, data)
        assert data["error"] and data["code"] and data["request_id"]
    assert (await client.get("/api/approvals?limit=100000")).status_code == 400
    assert (await client.get("/api/approvals?status=maybe")).status_code == 400
    assert (await client.get("/api/approvals/session/" + "s" * 65)).status_code == 400
    assert (await client.get("/api/approvals/audit?bogus=1")).status_code == 400
    missing_agent = await client.post("/api/approvals", json={"agent_id": str(uuid.uuid4()), "tool_name": "shell_exec"})
    assert missing_agent.status_code == 404


async def test_batch_is_all_or_nothing(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "carol")
    a, b, c = [(await create(client, agent))["id"] for _ in range(3)]
    await client.post(f"/api/approvals/{c}/reject")

    # One already decided: 409 naming it, and the other two are still pending.
    response = await client.post("/api/approvals/batch", json={"ids": [a, b, c], "decision": "approve"})
    body = await response.get_json()
    assert response.status_code == 409 and body["details"]["ids"] == [c]
    # One unknown: 404, nothing decided.
    ghost = str(uuid.uuid4())
    response = await client.post("/api/approvals/batch", json={"ids": [a, ghost], "decision": "reject"})
    assert response.status_code == 404 and (await response.get_json())["details"]["ids"] == [ghost]
    for approval_id in (a, b):
        assert (await (await client.get(f"/api/approvals/{approval_id}")).get_json())["status"] == "pending"

    response = await client.post("/api/approvals/batch", json={"ids": [a, b, a], "decision": "approve"})
    body = await response.get_json()
    assert response.status_code == 200, body
    assert [r["id"] for r in body["results"]] == [a, b] and {r["decision"] for r in body["results"]} == {"approved"}
    again = await client.post("/api/approvals/batch", json={"ids": [a], "decision": "reject"})
    assert again.status_code == 409


async def test_session_approve_all_checks_the_pending_set(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "dave")
    one = await create(client, agent, session_id="sess-1")
    two = await create(client, agent, session_id="sess-1")
    other = await create(client, agent, session_id="sess-2")
    listed = await (await client.get("/api/approvals/session/sess-1")).get_json()
    assert [a["id"] for a in listed["approvals"]] == [one["id"], two["id"]]

    stale = await client.post("/api/approvals/session/sess-1/approve_all", json={"expected_count": 1})
    assert stale.status_code == 409 and (await stale.get_json())["code"] == "pending_set_changed"
    stale = await client.post("/api/approvals/session/sess-1/approve_all", json={"expected_ids": [one["id"]]})
    assert stale.status_code == 409
    ok = await client.post("/api/approvals/session/sess-1/approve_all",
                           json={"expected_count": 2, "expected_ids": [two["id"], one["id"]]})
    body = await ok.get_json()
    assert ok.status_code == 200 and body["count"] == 2 and body["decision"] == "approved"
    empty = await client.post("/api/approvals/session/sess-1/approve_all", json={})
    assert (await empty.get_json())["count"] == 0

    rejected = await (await client.post("/api/approvals/session/sess-2/reject_all")).get_json()
    assert [r["id"] for r in rejected["results"]] == [other["id"]] and rejected["decision"] == "rejected"
    assert (await (await client.get("/api/approvals/count")).get_json()) == {"pending": 0}


async def test_audit_lists_decisions_with_filters(start: Any, spawn: Any) -> None:
    kernel, client = await start()
    alice, bob = await spawn(kernel, "alice"), await spawn(kernel, "bob")
    a1 = await create(client, alice, tool="shell_exec")
    a2 = await create(client, alice, tool="file_write")
    await create(client, bob, tool="shell_exec")  # stays pending: not in the audit
    b2 = await create(client, bob, tool="file_write")
    for approval_id in (a1["id"], a2["id"], b2["id"]):
        await client.post(f"/api/approvals/{approval_id}/reject")
    everything = await (await client.get("/api/approvals/audit")).get_json()
    assert everything["total"] == 3 and {e["status"] for e in everything["entries"]} == {"rejected"}
    by_agent = await (await client.get(f"/api/approvals/audit?agent_id={alice}")).get_json()
    assert {e["id"] for e in by_agent["entries"]} == {a1["id"], a2["id"]}
    by_tool = await (await client.get("/api/approvals/audit?tool_name=file_write&limit=1")).get_json()
    assert by_tool["total"] == 2 and len(by_tool["entries"]) == 1


async def test_pending_limit_per_agent(start: Any, spawn: Any) -> None:
    kernel, client = await start("[approval]\nmax_pending_per_agent = 2\n")
    agent = await spawn(kernel, "eve")
    await create(client, agent)
    await create(client, agent)
    response = await client.post("/api/approvals", json={"agent_id": agent, "tool_name": "shell_exec"})
    assert response.status_code == 429 and (await response.get_json())["code"] == "too_many_pending_approvals"


async def test_security_report_shows_the_real_config(start: Any) -> None:
    kernel, client = await start('[approval]\nrequire_approval = ["shell_*", "file_write"]\ntimeout_secs = 42\n'
                                 'second_factor = "totp"\ntotp_tools = ["shell_*"]\n')
    systems = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}
    gate = systems["tool_approvals"]
    assert gate["active"] is True and gate["plugin"] == "approvals"
    config = gate["config"]
    assert config["require_approval"] == ["shell_*", "file_write"] and config["timeout_secs"] == 42
    assert config["hooked_into_runtime"] is True
    assert config["timeout_fallback"] == "deny" and config["second_factor"] == "totp"
    assert config["totp_tools"] == ["shell_*"] and config["totp_confirmed"] is False
    status = await (await client.get("/api/status")).get_json()
    assert status["pending_approvals"] == 0


async def test_routes_need_a_key_when_one_is_set(start: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("LIBREFANG_API_KEY", "k-approvals-0123456789")
    kernel, client = await start()
    for method, path in [("GET", "/api/approvals"), ("GET", "/api/approvals/count"), ("POST", "/api/approvals/batch"),
                         ("GET", "/api/approvals/totp/status"), ("POST", "/api/approvals/totp/setup")]:
        response = await client.open(path, method=method, json={})
        assert response.status_code == 401, path
    ok = await client.get("/api/approvals/count", headers={"Authorization": "Bearer k-approvals-0123456789"})
    assert ok.status_code == 200

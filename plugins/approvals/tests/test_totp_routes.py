"""TOTP second factor over HTTP: enrollment, codes required for totp_tools, replay refused, recovery
codes single-use, lockout after repeated failures (also under a concurrent burst), revoke."""

from __future__ import annotations

import asyncio
from typing import Any

from librefang_approvals import totp

TOTP_CONFIG = '[approval]\nsecond_factor = "totp"\ntotp_tools = ["shell_exec"]\ntotp_max_failures = 5\ntotp_lockout_secs = 300\n'


async def enroll(kernel: Any, client: Any, clock: Any) -> dict[str, Any]:
    setup = await client.post("/api/approvals/totp/setup", json={})
    data = await setup.get_json()
    assert setup.status_code == 200, data
    confirm = await client.post("/api/approvals/totp/confirm", json={"code": totp.code_at(data["secret"], clock.now)})
    assert confirm.status_code == 200, await confirm.get_json()
    clock.now += 30  # the confirming code is spent; the next one belongs to the next step
    return data


async def started(start: Any, clock: Any, config: str = TOTP_CONFIG) -> tuple[Any, Any, Any]:
    kernel, client = await start(config)
    kernel.services["approvals"].totp.clock = clock
    return kernel, client, clock


async def new_request(client: Any, agent: str, tool: str = "shell_exec", session: str | None = None) -> str:
    body: dict[str, Any] = {"agent_id": agent, "tool_name": tool}
    if session:
        body["session_id"] = session
    response = await client.post("/api/approvals", json=body)
    return (await response.get_json())["id"]


async def test_enrollment_setup_confirm_status_and_vault(start: Any, clock: Any) -> None:
    kernel, client, clock = await started(start, clock)
    status = await (await client.get("/api/approvals/totp/status")).get_json()
    assert status["enrolled"] is False and status["confirmed"] is False and status["enforced"] is True
    assert status["scope"] == ["shell_exec"]

    setup = await (await client.post("/api/approvals/totp/setup", json={})).get_json()
    assert setup["otpauth_uri"].startswith("otpauth://totp/LibreFang:approvals?secret=" + setup["secret"])
    assert setup["qr_code"].startswith("data:image/svg+xml") and len(setup["recovery_codes"]) == 8
    assert len(set(setup["recovery_codes"])) == 8
    assert (await client.post("/api/approvals/totp/setup", json={})).status_code == 409  # pending confirmation
    wrong = await client.post("/api/approvals/totp/confirm", json={"code": "000000"})
    assert wrong.status_code == 400 and (await wrong.get_json())["code"] == "invalid_totp_code"
    status = await (await client.get("/api/approvals/totp/status")).get_json()
    assert status["pending_confirmation"] is True and status["confirmed"] is False

    ok = await client.post("/api/approvals/totp/confirm", json={"code": totp.code_at(setup["secret"], clock.now)})
    assert (await ok.get_json())["status"] == "confirmed"
    status = await (await client.get("/api/approvals/totp/status")).get_json()
    assert status["confirmed"] is True and status["remaining_recovery_codes"] == 8
    assert status["pending_confirmation"] is False

    # The secret is in the vault, not in the database; recovery codes only as salted hashes.
    assert kernel.vault.get("approvals.totp.secret") == setup["secret"]
    assert kernel.vault.get("approvals.totp.pending") is None
    raw = b"".join(p.read_bytes() for p in (kernel.home / "data").glob("librefang.db*"))
    assert setup["secret"].encode() not in raw
    assert not any(code.encode() in raw or code.replace("-", "").encode() in raw for code in setup["recovery_codes"])
    assert setup["secret"] not in str(await (await client.get("/api/security")).get_json())

    # Re-enrolling needs a current code; the old secret stays in force until the new one is confirmed.
    again = await client.post("/api/approvals/totp/setup", json={})
    assert again.status_code == 400 and (await again.get_json())["code"] == "totp_code_required"
    clock.now += 30
    renewed = await client.post("/api/approvals/totp/setup", json={"current_code": totp.code_at(setup["secret"], clock.now)})
    fresh = await renewed.get_json()
    assert renewed.status_code == 200 and fresh["secret"] != setup["secret"]
    assert kernel.vault.get("approvals.totp.secret") == setup["secret"]
    clock.now += 30
    await client.post("/api/approvals/totp/confirm", json={"code": totp.code_at(fresh["secret"], clock.now)})
    assert kernel.vault.get("approvals.totp.secret") == fresh["secret"]


async def test_totp_tools_need_a_code_and_a_code_works_once(start: Any, spawn: Any, clock: Any) -> None:
    kernel, client, clock = await started(start, clock)
    agent = await spawn(kernel, "ops")
    not_enrolled = await new_request(client, agent)
    response = await client.post(f"/api/approvals/{not_enrolled}/approve", json={"totp_code": "123456"})
    assert response.status_code == 400 and (await response.get_json())["code"] == "totp_not_enrolled"

    secret = (await enroll(kernel, client, clock))["secret"]
    first, second = await new_request(client, agent), await new_request(client, agent)
    plain = await new_request(client, agent, tool="file_write")
    assert (await (await client.get(f"/api/approvals/{first}")).get_json())["totp_required"] is True

    # The code that confirmed the enrollment is spent too.
    confirming = totp.code_at(secret, clock.now - 30)
    assert (await client.post(f"/api/approvals/{first}/approve", json={"totp_code": confirming})).status_code == 400
    missing = await client.post(f"/api/approvals/{first}/approve", json={})
    assert missing.status_code == 400 and (await missing.get_json())["code"] == "totp_code_required"
    code = totp.code_at(secret, clock.now)
    assert (await client.post(f"/api/approvals/{first}/approve", json={"totp_code": code})).status_code == 200
    replay = await client.post(f"/api/approvals/{second}/approve", json={"totp_code": code})
    body = await replay.get_json()
    assert replay.status_code == 400 and "already used" in body["error"]
    # An older code (previous step, still inside the skew window) is a replay too.
    older = totp.code_at(secret, clock.now - 30)
    assert (await client.post(f"/api/approvals/{second}/approve", json={"totp_code": older})).status_code == 400
    assert (await (await client.get(f"/api/approvals/{second}")).get_json())["status"] == "pending"
    clock.now += 30
    spaced = totp.code_at(secret, clock.now)
    spaced = f"{spaced[:3]} {spaced[3:]}"  # as authenticator apps display it
    ok = await client.post(f"/api/approvals/{second}/approve", json={"totp_code": spaced})
    assert ok.status_code == 200
    # A tool outside totp_tools needs no code; rejecting never needs one.
    assert (await client.post(f"/api/approvals/{plain}/approve", json={})).status_code == 200

    # Batches and approve_all refuse TOTP-protected requests before deciding anything.
    third = await new_request(client, agent, session="s-9")
    batch = await client.post("/api/approvals/batch", json={"ids": [third], "decision": "approve"})
    assert batch.status_code == 400 and (await batch.get_json())["code"] == "totp_required"
    everything = await client.post("/api/approvals/session/s-9/approve_all", json={})
    assert everything.status_code == 400
    assert (await (await client.get(f"/api/approvals/{third}")).get_json())["status"] == "pending"
    assert (await client.post("/api/approvals/session/s-9/reject_all")).status_code == 200


async def test_recovery_codes_are_single_use(start: Any, spawn: Any, clock: Any) -> None:
    kernel, client, clock = await started(start, clock)
    agent = await spawn(kernel, "ops")
    codes = (await enroll(kernel, client, clock))["recovery_codes"]
    first, second = await new_request(client, agent), await new_request(client, agent)
    used = await client.post(f"/api/approvals/{first}/approve", json={"totp_code": codes[0].upper()})
    assert used.status_code == 200
    again = await client.post(f"/api/approvals/{second}/approve", json={"totp_code": codes[0]})
    assert again.status_code == 400
    status = await (await client.get("/api/approvals/totp/status")).get_json()
    assert status["remaining_recovery_codes"] == 7
    assert (await client.post(f"/api/approvals/{second}/approve", json={"totp_code": codes[1]})).status_code == 200


async def test_brute_force_locks_out_even_the_right_code(start: Any, spawn: Any, clock: Any) -> None:
    kernel, client, clock = await started(start, clock)
    agent = await spawn(kernel, "ops")
    secret = (await enroll(kernel, client, clock))["secret"]
    target = await new_request(client, agent)
    right = totp.code_at(secret, clock.now)
    wrong = [f"{(int(right) + i) % 1_000_000:06d}" for i in range(1, 6)]
    statuses = []
    for guess in wrong:
        statuses.append((await client.post(f"/api/approvals/{target}/approve", json={"totp_code": guess})).status_code)
    assert statuses == [400, 400, 400, 400, 429]
    locked = await client.post(f"/api/approvals/{target}/approve", json={"totp_code": right})
    assert locked.status_code == 429 and (await locked.get_json())["code"] == "totp_locked"
    assert int(locked.headers["Retry-After"]) > 0
    status = await (await client.get("/api/approvals/totp/status")).get_json()
    assert "approve" in status["locked"]
    # Other buckets are separate: revoking with a wrong code is a plain 400, not the approve lockout.
    assert (await client.post("/api/approvals/totp/revoke", json={"code": "not-a-code"})).status_code == 400
    clock.now += 301
    ok = await client.post(f"/api/approvals/{target}/approve", json={"totp_code": totp.code_at(secret, clock.now)})
    assert ok.status_code == 200
    entries, _ = await kernel.audit.recent(100)
    assert sum(e["action"] == "TotpFailed" for e in entries) == 6


async def test_a_concurrent_burst_of_guesses_meets_the_lockout(start: Any, spawn: Any, clock: Any) -> None:
    kernel, client, clock = await started(start, clock)
    agent = await spawn(kernel, "ops")
    secret = (await enroll(kernel, client, clock))["secret"]
    target = await new_request(client, agent)
    right = int(totp.code_at(secret, clock.now))
    guesses = [f"{(right + i) % 1_000_000:06d}" for i in range(1, 21)]
    responses = await asyncio.gather(*[client.post(f"/api/approvals/{target}/approve", json={"totp_code": g})
                                       for g in guesses])
    codes = sorted(r.status_code for r in responses)
    assert codes == [400] * 4 + [429] * 16


async def test_revoke(start: Any, clock: Any) -> None:
    kernel, client, clock = await started(start, clock)
    secret = (await enroll(kernel, client, clock))["secret"]
    assert (await client.post("/api/approvals/totp/revoke", json={"code": "000000"})).status_code == 400
    response = await client.post("/api/approvals/totp/revoke", json={"code": totp.code_at(secret, clock.now)})
    assert (await response.get_json())["status"] == "revoked"
    status = await (await client.get("/api/approvals/totp/status")).get_json()
    assert status["enrolled"] is False and status["confirmed"] is False
    assert kernel.vault.get("approvals.totp.secret") is None
    assert (await client.post("/api/approvals/totp/revoke", json={"code": "123456"})).status_code == 400
    for body in ({}, {"code": ""}, {"code": "1" * 65}, {"code": "123456", "extra": 1}):
        assert (await client.post("/api/approvals/totp/revoke", json=body)).status_code == 400
    assert (await client.post("/api/approvals/totp/setup", json={"current_code": 5})).status_code == 400


async def test_totp_tools_without_second_factor_is_a_config_error(make_kernel: Any) -> None:
    import librefang_approvals.plugin as approvals_plugin
    import pytest
    from librefang.errors import ConfigError

    with pytest.raises(ConfigError, match="second_factor"):
        await make_kernel(plugins={"approvals": approvals_plugin}, load_entry_points=False,
                          config='[approval]\ntotp_tools = ["shell_exec"]\n')

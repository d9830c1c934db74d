"""The rules that apply to a tool are remembered per tool name until the configuration changes
(a reload replaces them at once); the vault's values are read afresh for every checked call."""

from __future__ import annotations

from typing import Any

from librefang_taint.api import check_outbound

KEY = "sk-proj-Zq8LmN3vBx7KpT2wRf9Hs"


async def test_a_config_reload_reaches_the_remembered_rules(start: Any) -> None:
    kernel, client = await start()
    service = kernel.services["taint"]
    assert check_outbound(kernel, "channel_send", {"text": f"key {KEY}"}) is None  # no sink, no rule
    assert service.rules_for("channel_send") == []
    path = kernel.config.path
    path.write_text(path.read_text() + '[taint]\nsinks = { channel_send = ["text"] }\n')
    response = await client.post("/api/config/reload")
    assert response.status_code == 200, await response.get_json()
    assert [r.name for r in service.rules_for("channel_send")] == ["sink:channel_send"]
    assert check_outbound(kernel, "channel_send", {"text": f"key {KEY}"}) == (
        "the outbound text in 'text' contains a sk- API key")
    assert check_outbound(kernel, "agent_send", {"message": KEY}) is None  # the sinks were replaced


async def test_a_new_vault_value_is_found_on_the_next_call(start: Any) -> None:
    kernel, _ = await start()
    message = {"agent": "bob", "message": "the passphrase is plum-orchard-42"}
    assert check_outbound(kernel, "agent_send", message) is None
    kernel.vault.set("PASSPHRASE", "plum-orchard-42")
    assert check_outbound(kernel, "agent_send", message) == (
        "the outbound text in 'message' contains a secret value from the vault")
    # a tool no rule covers reads nothing
    assert check_outbound(kernel, "system_time", {"x": "plum-orchard-42"}) is None

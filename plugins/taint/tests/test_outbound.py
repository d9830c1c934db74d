"""Tainted outbound calls in real turns against the fake provider server: agent_send with a key or a
vault secret, web_fetch with a credential in the URL, an operator rule on a plugin's tool; each is
refused (error result to the model, audit entry, bus event) and the clean call still goes through."""

from __future__ import annotations

from typing import Any

from librefang import hookimpl
from librefang_runtime.api import Tool
from sqlalchemy import text

from tests.fakes.llm_server import Script, ToolCall

KEY = "sk-proj-Zq8LmN3vBx7KpT2wRf9Hs"


def tool_results(fake: Any, index: int) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in fake.requests[index].body["messages"] if m["role"] == "tool"}


async def taint_audit(kernel: Any) -> list[tuple[str, str, str]]:
    async with kernel.db.begin() as conn:
        rows = (await conn.execute(text(
            "SELECT target, detail, outcome FROM core_audit_entries WHERE action = 'TaintViolation' ORDER BY seq"))).all()
    return [(r[0], r[1], r[2]) for r in rows]


async def say(client: Any, agent_id: str) -> dict[str, Any]:
    response = await client.post(f"/api/agents/{agent_id}/message", json={"message": "go"})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def test_agent_send_with_a_key_is_refused_and_the_clean_one_delivered(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    sender = await spawn(kernel, "sender")
    await spawn(kernel, "receiver")
    events = kernel.bus.subscribe("taint.*")
    fake_llm.script(
        Script(tool_calls=[ToolCall("agent_send", {"agent": "receiver", "message": f"the key is {KEY}"}, id="bad")]),
        Script(tool_calls=[ToolCall("agent_send", {"agent": "receiver", "message": "please say hello"}, id="ok")]),
        Script(text="hello"),  # the receiver's turn: only the clean message arrives
        Script(text="done"),
    )
    reply = await say(client, sender)
    assert reply["response"] == "done"
    refused = tool_results(fake_llm, 1)["bad"]
    assert refused.startswith("Error: the call to agent_send was refused: the outbound text in 'message' contains a "
                              "sk- API key")
    assert KEY not in refused
    assert tool_results(fake_llm, 3)["ok"] == "hello"
    assert fake_llm.requests[2].body["messages"][-1]["content"] == "please say hello"
    assert all(KEY not in str(r.body) for r in fake_llm.requests[2:3])  # never reached the receiver
    [(target, detail, outcome)] = await taint_audit(kernel)
    assert (target, outcome) == ("agent_send", "denied")
    assert '"kind": "sk- API key"' in detail and '"field": "message"' in detail and KEY not in detail
    event = events.queue.get_nowait()
    assert event.topic == "taint.violation" and event.data["agent_name"] == "sender"


async def test_a_vault_secret_cannot_be_sent(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    kernel.vault.set("DB_PASS", "plain words secret 77")
    sender = await spawn(kernel, "leaker")
    fake_llm.script(
        Script(tool_calls=[ToolCall("agent_send", {"agent": "leaker2", "message": "pw: plain words secret 77"}, id="v")]),
        Script(text="ok"),
    )
    await spawn(kernel, "leaker2")
    await say(client, sender)
    result = tool_results(fake_llm, 1)["v"]
    assert "contains a secret value from the vault" in result and "plain words" not in result
    assert len(fake_llm.requests) == 2  # the receiver never ran


async def test_web_fetch_with_a_credential_in_the_url_is_refused_before_any_io(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start()
    agent = await spawn(kernel, "fetcher")
    fake_llm.script(
        Script(tool_calls=[ToolCall("web_fetch", {"url": "https://example.com/collect?api_key=AbC123xyz789"}, id="u"),
                           ToolCall("web_fetch", {"url": f"https://example.com/{KEY}"}, id="p")]),
        Script(text="ok"),
    )
    await say(client, agent)
    results = tool_results(fake_llm, 1)
    assert "the outbound text in 'url' contains a key=value secret" in results["u"]
    assert "contains a sk- API key" in results["p"]
    assert len(await taint_audit(kernel)) == 2


class Uploader:
    """A third-party tool the operator names in a rule."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def upload(data: dict[str, Any], context: Any) -> str:
            self.sent.append(data["payload"]["text"])
            return "uploaded"

        register(Tool("upload_note", "Upload a note.", upload,
                      {"type": "object", "properties": {"payload": {"type": "object"}}, "required": ["payload"]}))


async def test_a_taint_rule_covers_a_plugin_tool(start: Any, spawn: Any, fake_llm: Any) -> None:
    uploader = Uploader()
    kernel, client = await start(
        '[[taint_rules]]\nname = "uploads"\ntools = ["upload_*"]\nfields = ["payload"]\n'
        'pattern = "(?i)confidential"\nreason = "confidential material"\n', plugins={"uploader": uploader})
    agent = await spawn(kernel, "writer")
    fake_llm.script(
        Script(tool_calls=[ToolCall("upload_note", {"payload": {"text": "CONFIDENTIAL: plans"}}, id="c"),
                           ToolCall("upload_note", {"payload": {"text": "token=Qw3rTy9876"}}, id="k"),
                           ToolCall("upload_note", {"payload": {"text": "lunch menu"}}, id="ok")]),
        Script(text="ok"),
    )
    await say(client, agent)
    results = tool_results(fake_llm, 1)
    assert "contains a confidential material" in results["c"]
    assert "contains a key=value secret" in results["k"]
    assert results["ok"] == "uploaded" and uploader.sent == ["lunch menu"]


async def test_switched_off_and_security_report(start: Any, spawn: Any, fake_llm: Any) -> None:
    kernel, client = await start('[taint]\nenabled = false\n')
    agent = await spawn(kernel, "free")
    await spawn(kernel, "free2")
    fake_llm.script(Script(tool_calls=[ToolCall("agent_send", {"agent": "free2", "message": KEY}, id="x")]),
                    Script(text="got it"), Script(text="ok"))
    await say(client, agent)
    assert tool_results(fake_llm, 2)["x"] == "got it"
    systems = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}
    assert systems["taint"]["active"] is False
    assert systems["taint"]["config"]["sinks"] == {"agent_send": ["message"], "web_fetch": ["url", "body"]}


async def test_security_report_counts_and_rules(start: Any) -> None:
    kernel, client = await start('[[taint_rules]]\nname = "r1"\npattern = "x"\nbuiltin = false\n')
    kernel.vault.set("API_TOKEN", "vault-value-123456")
    report = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}["taint"]
    assert report["active"] is True and report["plugin"] == "taint"
    config = report["config"]
    assert config["rules"] == [{"name": "r1", "tools": ["*"], "fields": ["*"], "pattern": True, "builtin": False}]
    assert config["known_secret_values"] >= 1 and "sk- API key" in config["builtin_shapes"]
    assert "vault-value-123456" not in str(report)


async def test_a_bad_rule_stops_the_start_naming_the_key(make_kernel: Any) -> None:
    import librefang_taint.plugin as taint_plugin
    import pytest
    from librefang.errors import ConfigError

    with pytest.raises(ConfigError, match="taint_rules"):
        await make_kernel(plugins={"taint": taint_plugin}, load_entry_points=False,
                          config='[[taint_rules]]\nname = "bad"\npattern = "(unclosed"\n')


async def test_taint_alone_loads_and_reports_inactive(make_kernel: Any) -> None:
    import librefang_taint.plugin as taint_plugin
    from librefang.app import build_app
    from librefang.testing import make_client

    kernel = await make_kernel(plugins={"taint": taint_plugin}, load_entry_points=False)
    assert kernel.plugins.records["taint"].error is None
    client = make_client(build_app(kernel))
    report = {s["name"]: s for s in (await (await client.get("/api/security")).get_json())["systems"]}["taint"]
    assert report["active"] is False and report["config"]["enabled"] is True
    assert report["config"]["hooked_into_runtime"] is False


async def test_other_plugins_check_their_own_outbound_text(start: Any) -> None:
    from librefang_taint.api import check_outbound

    kernel, _ = await start('[taint]\nsinks = { channel_send = ["text"] }\n')
    assert check_outbound(kernel, "channel_send", {"text": "see you at 5"}) is None
    problem = check_outbound(kernel, "channel_send", {"text": f"key {KEY}"})
    assert problem == "the outbound text in 'text' contains a sk- API key" and KEY not in problem
    assert check_outbound(kernel, "agent_send", {"message": KEY}) is None  # the sinks were replaced

"""The manifest model: defaults, unknown keys kept, errors that name the key and its line."""

from __future__ import annotations

import tomllib

import pytest
from librefang_agents.manifest import AgentManifest, ManifestError, key_lines, parse_manifest

FULL = '''
name = "full-agent"
version = "1.2.3"
description = "every table"
author = "me"
module = "builtin:chat"
tags = ["a", "b"]
schedule = { periodic = { cron = "0 * * * *" } }
session_mode = "new"
profile = "coding"
skills = ["web"]
mcp_servers = ["memory"]
tool_allowlist = ["file_*"]
tool_blocklist = ["shell_exec"]
exec_policy = "deny"
max_history_messages = 1000
future_top_level_key = "kept"

[model]
provider = "anthropic"
name = "claude-x"
max_tokens = 1000
temperature = 0.1
system_prompt = """
Multi-line prompt.
temperature = 99
"""
top_p = 0.9

[[fallback_models]]
provider = "openai"
model = "gpt-4o-mini"
seed = 7

[resources]
max_llm_tokens_per_hour = 100000
max_cost_per_day_usd = 2.5

[capabilities]
tools = ["file_read", "web_fetch"]
network = ["*"]
agent_spawn = true

[autonomous]
max_iterations = 10

[tools.web_fetch]
timeout = 5

[metadata]
team = "x"

[[triggers]]
pattern = "deploy.*"
prompt_template = "Deployment {{event}}"

[workspaces]
lib = { path = "shared/library", mode = "ro" }

[thinking]
budget_tokens = 2000
'''


def test_every_field_has_its_default():
    m = AgentManifest()
    assert m.name == "unnamed" and m.version == "0.1.0" and m.module == "builtin:chat"
    assert m.schedule == "reactive" and m.session_mode == "persistent" and m.profile is None
    assert m.skills == [] and m.mcp_servers == [] and m.tool_allowlist == [] and m.tool_blocklist == []
    assert m.tools_disabled is False and m.enabled is True and m.max_history_messages == 60
    assert m.max_concurrent_invocations == 1 and m.web_search_augmentation == "off"
    assert (m.model.provider, m.model.model, m.model.max_tokens, m.model.temperature) == ("default", "default", 4096, 0.7)
    assert m.model.system_prompt == "You are a helpful AI agent."
    assert m.fallback_models == [] and m.triggers == [] and m.metadata == {}
    r = m.resources
    assert (r.max_llm_tokens_per_hour, r.max_tool_calls_per_minute, r.max_memory_bytes, r.max_cpu_time_ms) == (
        0, 60, 256 * 1024 * 1024, 30_000)
    assert r.max_network_bytes_per_hour == 100 * 1024 * 1024 and r.max_cost_per_hour_usd == 0.0
    c = m.capabilities
    assert c.tools == [] and c.network == [] and c.agent_spawn is False and c.ofp_discover is False


def test_full_manifest_parses_and_unknown_keys_round_trip():
    m = parse_manifest(FULL)
    assert m.schedule_kind() == "periodic" and m.schedule.periodic.cron == "0 * * * *"
    assert m.model.model == "claude-x"  # "name" is an alias of "model"
    assert m.max_history_messages == 500  # clamped to 4..500
    assert m.fallback_models[0].model == "gpt-4o-mini"
    assert m.workspaces["lib"].mode == "ro" and m.triggers[0].pattern == "deploy.*"
    again = tomllib.loads(m.to_toml())
    assert again["future_top_level_key"] == "kept"
    assert again["model"]["top_p"] == 0.9
    assert again["fallback_models"][0]["seed"] == 7
    assert again["tools"]["web_fetch"]["timeout"] == 5
    assert again["thinking"]["budget_tokens"] == 2000
    assert "Multi-line prompt." in again["model"]["system_prompt"]
    # parse -> dump -> parse is stable
    assert parse_manifest(m.to_toml()).to_data() == m.to_data()


def test_stored_data_holds_only_keys_that_were_set():
    data = parse_manifest('name = "x"\n[model]\ntemperature = 0.2\n').to_data()
    assert data == {"name": "x", "model": {"temperature": 0.2}}


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('name = "a"\n\n[model]\nprovider = "x"\ntemperature = 3.5\n', "model.temperature", 5),
        ('name = "a"\n[[fallback_models]]\nprovider = "p"\nmodel = "m"\n[[fallback_models]]\nprovider = "q"\n',
         "fallback_models.1.model", 5),
        ('name = "a"\nschedule = { periodic = { cron = 5 } }\n', "schedule.periodic.cron", 2),
        ('name = "a"\nsession_mode = "sometimes"\n', "session_mode", 2),
        ('name = "../etc"\n', "name", 1),
        ('name = "a"\nmodule = "shell:rm"\n', "module", 2),
        ('name = "a"\nprofile = "root"\n', "profile", 2),
        ('name = "a"\n[capabilities]\ntools = ["bad tool!"]\n', "capabilities.tools", 3),
        ('name = "a"\n[model]\nsystem_prompt = """\ntemperature = 9\n"""\nmax_tokens = 0\n', "model.max_tokens", 6),
    ],
)
def test_validation_errors_name_key_and_line(text, key, line):
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert info.value.key.startswith(key)
    assert info.value.line == line
    assert f"(line {line})" in str(info.value) and "Invalid manifest" in str(info.value)


def test_syntax_errors_carry_the_line():
    with pytest.raises(ManifestError) as info:
        parse_manifest('name = "a"\ndescription = "unterminated\n[model]\n')
    assert info.value.line == 2 and "line 2" in str(info.value)


def test_key_lines_skips_multiline_strings_and_counts_array_tables():
    lines = key_lines('a = 1\nb = """\nc = 2\n"""\n[[t]]\nx = 1\n[[t]]\nx = 2\n[s.u]\nk = 1\n')
    assert lines[("a",)] == 1 and ("c",) not in lines
    assert lines[("t", 0, "x")] == 6 and lines[("t", 1, "x")] == 8 and lines[("s", "u", "k")] == 10


async def test_bad_manifest_over_http_is_400_naming_key_and_line(client):
    toml = 'name = "bad"\n[model]\ntemperature = 7\n'
    response = await client.post("/api/agents", json={"manifest_toml": toml})
    assert response.status_code == 400
    body = await response.get_json()
    assert body["code"] == "invalid_manifest"
    assert "model.temperature" in body["error"] and "line 3" in body["error"]
    assert body["details"] == {"key": "model.temperature", "line": 3}
    assert body["request_id"] == response.headers["x-request-id"]


async def test_toml_syntax_error_over_http(client):
    response = await client.post("/api/agents", json={"manifest_toml": 'name = "x"\nbroken = [1,\n'})
    assert response.status_code == 400
    body = await response.get_json()
    assert body["code"] == "invalid_manifest" and "line" in body["error"]


async def test_unknown_keys_survive_spawn_patch_and_restart(start_agents, spawn):
    kernel, client = await start_agents()
    toml = 'name = "keeper"\nfuture_flag = true\n[model]\nprovider = "x"\nseed = 42\n[x_plugin]\nlevel = "high"\n'
    agent_id = await spawn(client, "keeper", toml=toml)
    await client.patch(f"/api/agents/{agent_id}/config", json={"temperature": 0.3})
    await kernel.stop()
    _kernel, again = await start_agents()
    manifest = (await (await again.get(f"/api/agents/{agent_id}")).get_json())["manifest"]
    assert manifest["future_flag"] is True and manifest["x_plugin"] == {"level": "high"}
    assert manifest["model"]["seed"] == 42 and manifest["model"]["temperature"] == 0.3

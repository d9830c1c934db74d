"""The agent endpoints over HTTP: spawn, get, kill, patch, update, mode, identity, config, clone,
model, tools, skills, MCP servers, suspend/resume — each with good and bad input."""

from __future__ import annotations

import uuid

import pytest

UNKNOWN = str(uuid.uuid4())

# Every per-agent route with a body that would be valid for a real agent.
PER_AGENT = [
    ("GET", "", None),
    ("DELETE", "", None),
    ("PATCH", "", {"description": "x"}),
    ("PUT", "/update", {"manifest_toml": 'name = "z"'}),
    ("PUT", "/mode", {"mode": "assist"}),
    ("PATCH", "/identity", {"emoji": "x"}),
    ("PATCH", "/config", {"description": "x"}),
    ("POST", "/clone", {"new_name": "copy"}),
    ("PUT", "/model", {"model": "m"}),
    ("GET", "/tools", None),
    ("PUT", "/tools", {"tool_blocklist": []}),
    ("GET", "/skills", None),
    ("PUT", "/skills", []),
    ("GET", "/mcp_servers", None),
    ("PUT", "/mcp_servers", []),
    ("PUT", "/suspend", None),
    ("PUT", "/resume", None),
    ("GET", "/files", None),
    ("GET", "/files/a.txt", None),
    ("PUT", "/files/a.txt", {"content": "x"}),
    ("DELETE", "/files/a.txt", None),
]


async def test_invalid_uuid_is_400_and_unknown_agent_is_404(client):
    for method, suffix, body in PER_AGENT:
        kwargs = {"json": body} if body is not None else {}
        response = await client.open(f"/api/agents/not-a-uuid{suffix}", method=method, **kwargs)
        assert response.status_code == 400, (method, suffix)
        assert (await response.get_json())["code"] == "invalid_agent_id"
        response = await client.open(f"/api/agents/{UNKNOWN}{suffix}", method=method, **kwargs)
        assert response.status_code == 404, (method, suffix)
        assert (await response.get_json())["code"] == "agent_not_found"


async def test_upload_with_bad_or_unknown_agent(client):
    assert (await client.post("/api/agents/nope/upload", data=b"x", headers={"X-Filename": "a"})).status_code == 400
    assert (await client.post(f"/api/agents/{UNKNOWN}/upload", data=b"x", headers={"X-Filename": "a"})).status_code == 404


async def test_spawn_get_and_duplicate_name(client, hello):
    response = await client.post("/api/agents", json={"manifest_toml": hello.format(name="alpha")})
    assert response.status_code == 201
    body = await response.get_json()
    assert set(body) == {"agent_id", "name"} and body["name"] == "alpha"
    uuid.UUID(body["agent_id"])
    detail = await (await client.get(f"/api/agents/{body['agent_id']}")).get_json()
    assert detail["state"] == "Running" and detail["mode"] == "full" and detail["ready"] is True
    assert detail["model"]["provider"] == "openai" and detail["model"]["model"] == "gpt-4o-mini"
    again = await client.post("/api/agents", json={"manifest_toml": hello.format(name="alpha")})
    assert again.status_code == 409 and (await again.get_json())["code"] == "agent_already_exists"
    # names are unique regardless of case (they name workspace folders)
    upper = await client.post("/api/agents", json={"manifest_toml": hello.format(name="ALPHA")})
    assert upper.status_code == 409
    # name override makes a second agent from the same manifest
    other = await client.post("/api/agents", json={"manifest_toml": hello.format(name="alpha"), "name": "beta"})
    assert other.status_code == 201 and (await other.get_json())["name"] == "beta"


SPAWN_BAD = [
        ({}, 400, "invalid_request"),
        ({"manifest_toml": "   "}, 400, "invalid_request"),
        ({"manifest_toml": 'name = "x"', "unknown": 1}, 400, "invalid_body"),
        ({"manifest_toml": 42}, 400, "invalid_body"),
        ({"template": "../../etc"}, 400, "invalid_template"),
        ({"template": "no-such-template"}, 404, "template_not_found"),
        ({"manifest_toml": 'name = "x"', "name": "bad/name"}, 400, "invalid_manifest"),
        ({"manifest_toml": 'name = "x"\n' + "# pad\n" * 200_000}, 413, "manifest_too_large"),
        ({"template": "coder", "signed_manifest": "{}"}, 400, "invalid_request"),
]


async def test_spawn_bad_input(client):
    for body, status, code in SPAWN_BAD:
        response = await client.post("/api/agents", json=body)
        assert response.status_code == status, await response.get_data(as_text=True)
        assert (await response.get_json())["code"] == code
    assert (await (await client.get("/api/agents")).get_json())["total"] == 1  # only the default agent


async def test_spawn_from_template_with_name(client):
    response = await client.post("/api/agents", json={"template": "coder", "name": "my-coder"})
    assert response.status_code == 201
    detail = await (await client.get(f"/api/agents/{(await response.get_json())['agent_id']}")).get_json()
    assert detail["name"] == "my-coder" and detail["profile"] == "coding" and "shell_exec" in detail["tools"]


async def test_spawn_non_json_body(client):
    response = await client.post("/api/agents", data="name=x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    response = await client.post("/api/agents", data="{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and (await response.get_json())["code"] == "invalid_json"


async def test_kill_is_idempotent_and_frees_the_name(client, spawn, hello, agents_kernel):
    agent_id = await spawn(client, "doomed")
    workspace = agents_kernel.home / "workspaces" / "agents" / "doomed"
    assert not workspace.exists()  # created on first use
    await client.put(f"/api/agents/{agent_id}/files/keep.txt", json={"content": "kept"})
    assert workspace.is_dir()
    response = await client.delete(f"/api/agents/{agent_id}")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "killed", "agent_id": agent_id, "name": "doomed"}
    assert not workspace.exists()
    assert (agents_kernel.home / "workspaces" / "archive" / f"doomed-{agent_id}" / "keep.txt").read_text() == "kept"
    again = await client.delete(f"/api/agents/{agent_id}")
    assert again.status_code == 200 and (await again.get_json())["status"] == "already-deleted"
    assert (await client.get(f"/api/agents/{agent_id}")).status_code == 404
    assert (await client.delete(f"/api/agents/{agent_id}?confirm=true")).status_code == 200
    assert (await client.delete(f"/api/agents/{agent_id}?confirm=maybe")).status_code == 400
    new_id = await spawn(client, "doomed")  # the name is free again, with a fresh id
    assert new_id != agent_id


async def test_patch_agent(client, spawn, agents_kernel):
    agent_id = await spawn(client, "patchy")
    await client.put(f"/api/agents/{agent_id}/files/notes.md", json={"content": "n"})
    response = await client.patch(f"/api/agents/{agent_id}", json={
        "description": "new words", "tags": ["x", "y"], "schedule": {"continuous": {"check_interval_secs": 60}},
        "name": "patched",
    })
    assert response.status_code == 200
    assert await response.get_json() == {"status": "updated", "agent_id": agent_id, "name": "patched"}
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["description"] == "new words" and detail["tags"] == ["x", "y"]
    assert detail["schedule"] == {"continuous": {"check_interval_secs": 60}} and detail["name"] == "patched"
    assert (agents_kernel.home / "workspaces" / "agents" / "patched" / "notes.md").is_file()  # follows the rename
    assert not (agents_kernel.home / "workspaces" / "agents" / "patchy").exists()
    for bad, code in [
        ({}, "invalid_request"),
        ({"schedule": "hourly"}, "invalid_manifest"),
        ({"tags": "not-a-list"}, "invalid_body"),
        ({"owner": "x"}, "invalid_body"),
        ({"name": "../x"}, "invalid_manifest"),
        ({"manifest_toml": "[broken"}, "invalid_manifest"),
    ]:
        response = await client.patch(f"/api/agents/{agent_id}", json=bad)
        assert response.status_code == 400, bad
        assert (await response.get_json())["code"] == code, bad
    await spawn(client, "taken")
    response = await client.patch(f"/api/agents/{agent_id}", json={"name": "taken"})
    assert response.status_code == 409
    assert (await client.patch(f"/api/agents/{agent_id}", json={"name": "TAKEN"})).status_code == 409
    assert (await client.patch(f"/api/agents/{agent_id}", json={"name": "PATCHED"})).status_code == 200
    assert (await client.patch(f"/api/agents/{agent_id}", json={"name": "patched"})).status_code == 200
    response = await client.patch(f"/api/agents/{agent_id}", json={"manifest_toml": 'description = "whole"\n'})
    assert response.status_code == 200
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["description"] == "whole" and detail["name"] == "patched" and detail["tags"] == []


async def test_update_agent(client, spawn):
    agent_id = await spawn(client, "upd")
    await client.put(f"/api/agents/{agent_id}/suspend")
    toml = 'name = "upd"\ndescription = "v2"\nprofile = "research"\n[model]\nmodel = "m2"\n'
    response = await client.put(f"/api/agents/{agent_id}/update", json={"manifest_toml": toml})
    assert response.status_code == 200
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["description"] == "v2" and detail["profile"] == "research" and detail["model"]["model"] == "m2"
    assert detail["state"] == "Suspended" and detail["id"] == agent_id  # id and state kept
    for bad, status in [({}, 400), ({"manifest_toml": 'name = "upd"\n[model]\ntemperature = -1\n'}, 400),
                        ({"manifest_toml": "x", "extra": 1}, 400)]:
        assert (await client.put(f"/api/agents/{agent_id}/update", json=bad)).status_code == status


async def test_mode(client, spawn, agents_kernel):
    agent_id = await spawn(client, "moody")
    with agents_kernel.bus.subscribe("agent.*") as events:
        response = await client.put(f"/api/agents/{agent_id}/mode", json={"mode": "observe"})
        assert response.status_code == 200
        assert await response.get_json() == {"status": "updated", "mode": "observe", "agent_id": agent_id}
        event = events.queue.get_nowait()
    assert event.topic == "agent.mode_changed" and event.data["mode"] == "observe"
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["mode"] == "observe" and detail["tools"] == []
    for bad in ({"mode": "Stable"}, {"mode": ""}, {}, {"mode": 3}):
        assert (await client.put(f"/api/agents/{agent_id}/mode", json=bad)).status_code == 400
    entries, _ = await agents_kernel.audit.recent(20)
    assert any(e["action"] == "AgentModeChange" and e["target"] == agent_id for e in entries)


async def test_suspend_and_resume(client, spawn):
    agent_id = await spawn(client, "sleepy")
    response = await client.put(f"/api/agents/{agent_id}/suspend")
    assert await response.get_json() == {"status": "suspended", "agent_id": agent_id}
    assert (await (await client.get(f"/api/agents/{agent_id}")).get_json())["state"] == "Suspended"
    assert (await client.put(f"/api/agents/{agent_id}/suspend")).status_code == 200  # idempotent
    response = await client.put(f"/api/agents/{agent_id}/resume")
    assert await response.get_json() == {"status": "running", "agent_id": agent_id}
    assert (await client.post(f"/api/agents/{agent_id}/suspend")).status_code == 405


async def test_identity_merge(client, spawn):
    agent_id = await spawn(client, "face")
    response = await client.patch(f"/api/agents/{agent_id}/identity", json={"emoji": "🐙", "color": "#FF5C00"})
    assert response.status_code == 200
    response = await client.patch(f"/api/agents/{agent_id}/identity", json={"vibe": "calm", "emoji": None})
    assert response.status_code == 200
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["identity"] == {"emoji": "🐙", "color": "#FF5C00", "vibe": "calm"}
    await client.patch(f"/api/agents/{agent_id}/identity", json={"color": ""})
    listing = await (await client.get("/api/agents?q=face")).get_json()
    assert listing["items"][0]["identity"] == {"emoji": "🐙", "avatar_url": None, "color": ""}
    for bad in ({"color": "red"}, {"avatar_url": "javascript:alert(1)"}, {"mood": "x"}, {}):
        response = await client.patch(f"/api/agents/{agent_id}/identity", json=bad)
        assert response.status_code == 400, bad


async def test_patch_config(client, spawn, agents_kernel):
    agent_id = await spawn(client, "cfg")
    with agents_kernel.bus.subscribe("agent.config_changed") as events:
        response = await client.patch(f"/api/agents/{agent_id}/config", json={
            "system_prompt": "Be terse.", "temperature": 0.1, "max_tokens": 512, "emoji": "🤖",
            "fallback_models": [{"provider": "ollama", "model": "llama3"}], "web_search_augmentation": "auto",
        })
        assert response.status_code == 200
        assert events.queue.get_nowait().data["agent_id"] == agent_id
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["system_prompt"] == "Be terse." and detail["model"]["temperature"] == 0.1
    assert detail["model"]["max_tokens"] == 512 and detail["identity"]["emoji"] == "🤖"
    assert detail["fallback_models"] == [{"provider": "ollama", "model": "llama3"}]
    assert detail["web_search_augmentation"] == "auto"
    entries, _ = await agents_kernel.audit.recent(20)
    assert any(e["action"] == "AgentConfigChange" and e["target"] == agent_id for e in entries)
    for bad in ({"temperature": 5}, {"max_tokens": 0}, {"web_search_augmentation": "sometimes"},
                {"fallback_models": [{"provider": "x"}]}, {"nonsense": 1}, {}):
        response = await client.patch(f"/api/agents/{agent_id}/config", json=bad)
        assert response.status_code == 400, bad


async def test_clone(client, spawn, agents_kernel):
    agent_id = await spawn(client, "orig", toml='name = "orig"\nskills = ["web"]\ntool_blocklist = ["shell_exec"]\n')
    await client.put(f"/api/agents/{agent_id}/files/notes/a.md", json={"content": "hello"})
    response = await client.post(f"/api/agents/{agent_id}/clone", json={"new_name": "copy"})
    assert response.status_code == 201
    body = await response.get_json()
    assert body["status"] == "cloned" and body["name"] == "copy" and body["agent_id"] != agent_id
    clone = await (await client.get(f"/api/agents/{body['agent_id']}")).get_json()
    assert clone["skills"] == ["web"] and clone["tool_blocklist"] == ["shell_exec"]
    file = await (await client.get(f"/api/agents/{body['agent_id']}/files/notes/a.md")).get_json()
    assert file["content"] == "hello"
    bare = await client.post(f"/api/agents/{agent_id}/clone",
                             json={"new_name": "bare", "include_skills": False, "include_tools": False})
    bare_detail = await (await client.get(f"/api/agents/{(await bare.get_json())['agent_id']}")).get_json()
    assert bare_detail["skills"] == [] and bare_detail["tool_blocklist"] == []
    assert (await client.post(f"/api/agents/{agent_id}/clone", json={"new_name": "copy"})).status_code == 409
    for bad in ({}, {"new_name": "../up"}, {"new_name": "ok", "x": 1}):
        assert (await client.post(f"/api/agents/{agent_id}/clone", json=bad)).status_code == 400


async def test_set_model(client, spawn):
    agent_id = await spawn(client, "modelled")
    response = await client.put(f"/api/agents/{agent_id}/model", json={"model": "claude-x", "provider": "anthropic"})
    assert await response.get_json() == {"status": "updated", "agent_id": agent_id, "provider": "anthropic",
                                         "model": "claude-x"}
    response = await client.put(f"/api/agents/{agent_id}/model", json={"model": "claude-y"})
    assert (await response.get_json())["provider"] == "anthropic"
    for bad in ({}, {"model": ""}, {"model": "x" * 201}, {"model": "m", "provider": ""}):
        assert (await client.put(f"/api/agents/{agent_id}/model", json=bad)).status_code == 400


async def test_tools(client, spawn):
    agent_id = await spawn(client, "tooly", toml='name = "tooly"\nprofile = "coding"\n')
    view = await (await client.get(f"/api/agents/{agent_id}/tools")).get_json()
    assert view["profile"] == "coding" and "shell_exec" in view["effective_tools"]
    response = await client.put(f"/api/agents/{agent_id}/tools", json={"tool_blocklist": ["shell_exec"]})
    assert response.status_code == 200
    assert "shell_exec" not in (await response.get_json())["effective_tools"]
    response = await client.put(f"/api/agents/{agent_id}/tools", json={"capabilities_tools": ["file_read"]})
    assert (await response.get_json())["effective_tools"] == ["file_read"]
    for bad in ({}, {"tool_allowlist": ["bad tool"]}, {"tool_blocklist": "x"}, {"tools": []}):
        assert (await client.put(f"/api/agents/{agent_id}/tools", json=bad)).status_code == 400


@pytest.mark.parametrize(("route", "key", "mode_key"), [("skills", "skills", "skills_mode"),
                                                       ("mcp_servers", "mcp_servers", "mcp_servers_mode")])
async def test_skills_and_mcp_servers(client, spawn, route, key, mode_key):
    agent_id = await spawn(client, f"lists-{route}")
    view = await (await client.get(f"/api/agents/{agent_id}/{route}")).get_json()
    assert view[key] == [] and view[mode_key] == "all"
    response = await client.put(f"/api/agents/{agent_id}/{route}", json=["alpha", "beta"])
    assert response.status_code == 200
    view = await response.get_json()
    assert view[key] == ["alpha", "beta"] and view[mode_key] == "allowlist"
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail[key] == ["alpha", "beta"] and detail[mode_key] == "allowlist"
    for bad in ({"skills": ["x"]}, [1, 2], [""], ["x" * 200], "alpha"):
        response = await client.put(f"/api/agents/{agent_id}/{route}", json=bad)
        assert response.status_code == 400, bad


async def test_every_route_needs_auth_when_a_key_is_set(start_agents):
    kernel, client = await start_agents(config='api_key = "s3cret-key-for-tests"\n')
    specs = [s for s in kernel.routes.specs.values() if s.plugin == "agents"]
    assert len(specs) >= 30
    for spec in specs:
        path = spec.path.replace("<agent_id>", UNKNOWN).replace("<path:filename>", "a.txt")
        path = path.replace("<file_id>", UNKNOWN).replace("<name>", "coder")
        response = await client.open(path, method=spec.method, scope_base={"client": ("10.0.0.9", 4000)})
        assert response.status_code == 401, (spec.method, spec.path)
    authed = await client.get("/api/agents", headers={"Authorization": "Bearer s3cret-key-for-tests"})
    assert authed.status_code == 200


async def test_spawn_honours_idempotency_key(client, hello):
    headers = {"Idempotency-Key": "spawn-once-123"}
    body = {"manifest_toml": hello.format(name="once")}
    first = await client.post("/api/agents", json=body, headers=headers)
    second = await client.post("/api/agents", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert await first.get_json() == await second.get_json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert (await (await client.get("/api/agents?q=once")).get_json())["total"] == 1
    other = await client.post("/api/agents", json={"manifest_toml": hello.format(name="twice")}, headers=headers)
    assert other.status_code == 409


async def test_detail_hides_inline_secrets(client, spawn):
    toml = ('name = "leaky"\n[model]\nprovider = "openai"\napi_key = "sk-live-abcdef123456"\n'
            'base_url = "https://user:hunter2@llm.example.com/v1"\n')
    agent_id = await spawn(client, "leaky", toml=toml)
    text = await (await client.get(f"/api/agents/{agent_id}")).get_data(as_text=True)
    assert "sk-live-abcdef123456" not in text and "hunter2" not in text
    detail = await (await client.get(f"/api/agents/{agent_id}")).get_json()
    assert detail["manifest"]["model"]["api_key"] == "***"
    assert detail["manifest"]["model"]["base_url"] == "https://***@llm.example.com/v1"


async def test_openapi_describes_the_agent_routes(client):
    document = await (await client.get("/api/openapi.json")).get_json()
    spawn = document["paths"]["/api/agents"]["post"]
    assert spawn["x-rate-cost"] == 50 and spawn["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SpawnRequest"}
    assert any(p["name"] == "Idempotency-Key" for p in spawn["parameters"])
    assert "201" in spawn["responses"]
    listing = document["paths"]["/api/agents"]["get"]
    assert listing["x-rate-cost"] == 2 and {p["name"] for p in listing["parameters"]} >= {"q", "status", "sort", "limit"}
    assert "/api/agents/{agent_id}/files/{filename}" in document["paths"]
    assert set(document["components"]["schemas"]["SpawnRequest"]["properties"]) == {
        "manifest_toml", "template", "name", "signed_manifest"}

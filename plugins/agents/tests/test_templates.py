"""Bundled and user templates: listing, detail, raw TOML, spawning, overrides, bad names."""

from __future__ import annotations

import tomllib

from librefang_agents.templates import bundled_names, list_templates

EXPECTED = {"assistant", "coder", "researcher", "writer", "analyst", "reviewer", "translator", "summarizer",
            "devops", "tutor", "planner", "support", "sql-helper", "hello-world"}


def test_bundled_templates_are_many_valid_and_distinct(tmp_path):
    assert EXPECTED <= set(bundled_names())
    templates = list_templates(tmp_path)
    assert len(templates) >= 10
    prompts = set()
    for template in templates:
        assert template.error is None, (template.name, template.error)
        assert template.manifest.name == template.name  # the file name is the agent name
        assert template.manifest.description
        prompts.add(template.manifest.model.system_prompt)
    assert len(prompts) == len(templates)  # each template has its own prompt


async def test_template_endpoints(client):
    body = await (await client.get("/api/templates")).get_json()
    assert body["total"] == len(body["templates"]) >= 10
    coder = next(t for t in body["templates"] if t["name"] == "coder")
    assert coder["source"] == "bundled" and coder["profile"] == "coding" and coder["description"]
    detail = await (await client.get("/api/templates/coder")).get_json()
    assert detail["manifest"]["name"] == "coder" and detail["manifest"]["model"]["temperature"] == 0.2
    response = await client.get("/api/templates/coder/toml")
    assert response.status_code == 200 and response.mimetype == "application/toml"
    assert tomllib.loads(await response.get_data(as_text=True))["profile"] == "coding"
    for path, status, code in [("/api/templates/nope", 404, "template_not_found"),
                               ("/api/templates/nope/toml", 404, "template_not_found"),
                               ("/api/templates/bad.name", 400, "invalid_template"),
                               ("/api/templates/a%20b/toml", 400, "invalid_template"),
                               ("/api/templates/..%2Fsecrets/toml", 404, "not_found")]:
        response = await client.get(path)
        assert response.status_code == status, path
        assert (await response.get_json())["code"] == code, path


async def test_user_templates_add_and_override(client, agents_kernel):
    folder = agents_kernel.home / "templates"
    folder.mkdir()
    (folder / "ops-bot.toml").write_text('name = "ops-bot"\ndescription = "mine"\nprofile = "minimal"\n')
    (folder / "coder.toml").write_text('name = "coder"\ndescription = "my own coder"\n')
    (folder / "broken.toml").write_text('name = "broken"\n[model]\ntemperature = 9\n')
    (folder / "nested").mkdir()
    (folder / "nested" / "agent.toml").write_text('name = "nested"\ndescription = "folder form"\n')
    listing = {t["name"]: t for t in (await (await client.get("/api/templates")).get_json())["templates"]}
    assert listing["ops-bot"]["source"] == "user" and listing["nested"]["description"] == "folder form"
    assert listing["coder"]["source"] == "user" and listing["coder"]["description"] == "my own coder"
    assert "model.temperature" in listing["broken"]["error"]
    response = await client.post("/api/agents", json={"template": "ops-bot"})
    assert response.status_code == 201
    response = await client.post("/api/agents", json={"template": "broken"})
    assert response.status_code == 400 and (await response.get_json())["code"] == "invalid_manifest"
    detail = await (await client.get("/api/templates/broken")).get_json()
    assert detail["manifest"] is None and "line 3" in detail["error"]


async def test_fresh_home_gets_the_default_assistant_once(start_agents, agents_kernel, client):
    listing = await (await client.get("/api/agents")).get_json()
    assert [i["name"] for i in listing["items"]] == ["assistant"]
    detail = await (await client.get(f"/api/agents/{listing['items'][0]['id']}")).get_json()
    assert detail["profile"] == "automation" and detail["model"]["max_tokens"] == 8192
    await client.delete(f"/api/agents/{detail['id']}")
    await agents_kernel.stop()
    _kernel, again = await start_agents()  # same home: an emptied registry stays empty
    assert (await (await again.get("/api/agents")).get_json())["total"] == 0


async def test_default_agent_can_be_switched_off(start_agents):
    _kernel, client = await start_agents(config="[agents]\nspawn_default_agent = false\n")
    assert (await (await client.get("/api/agents")).get_json())["total"] == 0


async def test_bad_agents_config_is_refused(make_kernel):
    import librefang_agents.plugin as agents_plugin
    import pytest
    from librefang.errors import ConfigError

    with pytest.raises(ConfigError, match="agents.max_agents"):
        await make_kernel(plugins={"agents": agents_plugin}, load_entry_points=False,
                          config="[agents]\nmax_agents = 0\n")

"""Tool profiles, effective capabilities, modes, and the child ≤ parent rule."""

from __future__ import annotations

import pytest
from librefang.errors import ApiError
from librefang_agents.capabilities import (
    PROFILES,
    effective_capabilities,
    implied_capabilities,
    inheritance_violations,
    visible_tools,
)
from librefang_agents.manifest import ManifestCapabilities, parse_manifest


def test_profiles_expand_to_tool_lists():
    assert PROFILES["minimal"] == ["file_read", "file_list"]
    assert set(PROFILES["coding"]) == {"file_read", "file_write", "file_list", "shell_exec", "web_fetch"}
    assert set(PROFILES["research"]) == {"web_fetch", "web_search", "file_read", "file_write"}
    assert {"agent_send", "memory_recall"} <= set(PROFILES["messaging"])
    assert set(PROFILES["automation"]) == set().union(*(PROFILES[p] for p in ("minimal", "coding", "research", "messaging")))
    assert PROFILES["full"] == ["*"]


def test_implied_capabilities():
    coding = implied_capabilities("coding")
    assert coding.shell == ["*"] and coding.network == ["*"] and coding.agent_spawn is False
    assert coding.memory_read == ["self.*"] and coding.memory_write == ["self.*"]
    messaging = implied_capabilities("messaging")
    assert messaging.agent_spawn is True and messaging.agent_message == ["*"] and messaging.memory_read == ["*"]
    assert implied_capabilities("minimal").network == [] and implied_capabilities("minimal").shell == []


def test_profile_applies_only_when_no_tools_are_declared():
    assert effective_capabilities(parse_manifest('profile = "research"')).tools == PROFILES["research"]
    own = parse_manifest('profile = "research"\n[capabilities]\ntools = ["file_read"]\n')
    assert effective_capabilities(own).tools == ["file_read"]


def test_visible_tools_allow_block_and_modes():
    m = parse_manifest('profile = "coding"\ntool_blocklist = ["shell_*"]\n')
    assert visible_tools(m, "full") == ["file_read", "file_write", "file_list", "web_fetch"]
    assert visible_tools(m, "assist") == ["file_list", "file_read", "web_fetch"]
    assert visible_tools(m, "observe") == []
    narrowed = parse_manifest('profile = "minimal"\ntool_allowlist = ["file_read", "shell_exec"]\n')
    assert visible_tools(narrowed, "full") == ["file_read"]  # an allow list never grants
    assert visible_tools(parse_manifest("tools_disabled = true"), "full") == []
    available = ["file_read", "web_fetch", "mcp_git_log", "shell_exec"]
    full = parse_manifest('tool_allowlist = ["mcp_*", "file_read"]')
    assert visible_tools(full, "full", available) == ["file_read", "mcp_git_log"]


def caps(**kw) -> ManifestCapabilities:
    return ManifestCapabilities(**kw)


@pytest.mark.parametrize(
    ("parent", "child", "problem"),
    [
        (caps(tools=["file_*"]), caps(tools=["file_read"]), None),
        (caps(tools=["file_read"]), caps(tools=["file_*"]), "tools"),
        (caps(tools=["file_read"]), caps(tools=[]), "tools"),  # [] means every tool
        (caps(tools=[]), caps(tools=["shell_exec"]), None),
        (caps(network=["api.example.com:443"]), caps(network=["*"]), "network"),
        (caps(network=["*"]), caps(network=["api.example.com:443"]), None),
        (caps(shell=[]), caps(shell=["ls"]), "shell"),
        (caps(agent_spawn=False), caps(agent_spawn=True), "agent_spawn"),
        (caps(memory_write=["self.*"]), caps(memory_write=["*"]), "memory_write"),
        (caps(ofp_discover=False), caps(ofp_discover=True), "ofp_discover"),
    ],
)
def test_inheritance(parent, child, problem):
    found = inheritance_violations(parent, child)
    if problem is None:
        assert found == []
    else:
        assert found and found[0].startswith(problem)


async def test_child_agent_never_gets_more_than_its_parent(agents_kernel):
    service = agents_kernel.services["agents"]
    parent = await service.spawn(parse_manifest(
        'name = "parent"\n[capabilities]\ntools = ["file_read", "agent_spawn"]\nagent_spawn = true\n'
    ))
    child = await service.spawn(parse_manifest('name = "child"\n[capabilities]\ntools = ["file_read"]\n'),
                                parent_id=parent.id)
    assert child.parent_id == parent.id
    detail = await service.describe(parent.id)
    assert detail["children"] == [child.id]
    with pytest.raises(ApiError) as info:
        await service.spawn(parse_manifest('name = "greedy"\n[capabilities]\ntools = ["shell_exec"]\n'),
                            parent_id=parent.id)
    assert info.value.status == 403 and info.value.code == "capability_escalation"
    with pytest.raises(ApiError) as info:  # no tools declared = every tool = more than the parent
        await service.spawn(parse_manifest('name = "greedy2"'), parent_id=parent.id)
    assert info.value.status == 403
    with pytest.raises(ApiError) as info:  # a parent without agent_spawn may not spawn at all
        await service.spawn(parse_manifest('name = "grandchild"\n[capabilities]\ntools = ["file_read"]\n'),
                            parent_id=child.id)
    assert info.value.status == 403 and info.value.code == "capability_denied"
    assert await service.find("greedy") is None


async def test_child_cannot_be_widened_later_over_http(agents_kernel, client):
    service = agents_kernel.services["agents"]
    parent = await service.spawn(parse_manifest(
        'name = "boss"\nprofile = "minimal"\n[capabilities]\ntools = ["file_read", "file_list"]\nagent_spawn = true\n'
    ))
    child = await service.spawn(parse_manifest('name = "worker"\n[capabilities]\ntools = ["file_read"]\n'),
                                parent_id=parent.id)
    response = await client.put(f"/api/agents/{child.id}/tools", json={"capabilities_tools": ["shell_exec"]})
    assert response.status_code == 403
    assert (await response.get_json())["code"] == "capability_escalation"
    response = await client.put(f"/api/agents/{child.id}/tools", json={"capabilities_tools": ["file_list"]})
    assert response.status_code == 200


async def test_profiles_endpoints(client):
    response = await client.get("/api/profiles")
    assert response.status_code == 200
    profiles = await response.get_json()
    assert [p["name"] for p in profiles] == list(PROFILES)
    coding = next(p for p in profiles if p["name"] == "coding")
    assert "shell_exec" in coding["tools"] and coding["capabilities"]["shell"] == ["*"]
    one = await (await client.get("/api/profiles/research")).get_json()
    assert one["tools"] == PROFILES["research"] and one["description"]
    response = await client.get("/api/profiles/root")
    assert response.status_code == 404 and (await response.get_json())["code"] == "profile_not_found"

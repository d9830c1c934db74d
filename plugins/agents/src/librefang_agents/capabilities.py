"""Tool profiles, the capabilities they imply, agent modes, and capability inheritance.

A profile is a named tool preset (``coding``, ``research``, ...). An agent's effective
capabilities are its ``[capabilities]`` table, or, when that declares no tools and a profile is
set, what the profile implies. A child agent may never hold a capability its parent lacks.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from librefang_agents.manifest import AgentManifest, ManifestCapabilities

_MINIMAL = ["file_read", "file_list"]
_CODING = ["file_read", "file_write", "file_list", "shell_exec", "web_fetch"]
_RESEARCH = ["web_fetch", "web_search", "file_read", "file_write"]
_MESSAGING = ["agent_send", "agent_list", "channel_send", "memory_store", "memory_list", "memory_recall"]

PROFILES: dict[str, list[str]] = {
    "minimal": _MINIMAL,
    "coding": _CODING,
    "research": _RESEARCH,
    "messaging": _MESSAGING,
    "automation": list(dict.fromkeys(_MINIMAL + _CODING + _RESEARCH + _MESSAGING)),
    "full": ["*"],
    "custom": ["*"],
}

PROFILE_DESCRIPTIONS: dict[str, str] = {
    "minimal": "Read and list files in the agent's workspace; nothing else.",
    "coding": "Read, write and list files, run shell commands (under the exec policy), fetch web pages.",
    "research": "Search and fetch the web, read and write notes in the workspace.",
    "messaging": "Talk to other agents and channels, and keep memories.",
    "automation": "Everything of minimal, coding, research and messaging together.",
    "full": "Every tool the daemon offers.",
    "custom": "Every tool, narrowed by the manifest's own capabilities and allow/block lists.",
}

MODES = ("observe", "assist", "full")
# Tools an agent in ``assist`` mode may still call: the read-only ones.
ASSIST_TOOLS = frozenset(
    {"file_read", "file_list", "memory_list", "memory_recall", "web_fetch", "web_search", "agent_list"}
)


def profile_tools(name: str) -> list[str]:
    """The tool list of a profile; ``KeyError`` for an unknown profile."""
    return list(PROFILES[name])


def implied_capabilities(profile: str) -> ManifestCapabilities:
    """What a profile grants: its tools plus the network, shell, agent and memory rights they need."""
    tools = profile_tools(profile)
    star = "*" in tools
    has_net = star or any(t.startswith("web_") for t in tools)
    has_shell = star or "shell_exec" in tools
    has_agent = star or any(t.startswith("agent_") for t in tools)
    has_memory = star or any(t.startswith("memory_") for t in tools)
    return ManifestCapabilities(
        tools=tools,
        network=["*"] if has_net else [],
        shell=["*"] if has_shell else [],
        agent_spawn=has_agent,
        agent_message=["*"] if has_agent else [],
        memory_read=["*"] if has_memory else ["self.*"],
        memory_write=["self.*"],
    )


def effective_capabilities(manifest: AgentManifest) -> ManifestCapabilities:
    """The capabilities an agent really holds (profile expansion applied)."""
    caps = manifest.capabilities
    if manifest.profile and manifest.profile != "custom" and not caps.tools:
        return implied_capabilities(manifest.profile)
    return caps


def _tools_of(caps: ManifestCapabilities) -> list[str]:
    # An empty tool list means "every tool": treat it as the wildcard when comparing.
    return caps.tools or ["*"]


def _covered(child: list[str], parent: list[str]) -> list[str]:
    """Child patterns no parent pattern covers (a literal child pattern must match a parent glob)."""
    return [c for c in child if not any(fnmatchcase(c, p) for p in parent)]


def inheritance_violations(parent: ManifestCapabilities, child: ManifestCapabilities) -> list[str]:
    """Every way ``child`` exceeds ``parent``; empty when the child asks for no more than the parent has."""
    problems: list[str] = []
    extra = _covered(_tools_of(child), _tools_of(parent))
    if extra:
        problems.append(f"tools {extra}")
    for field in ("network", "memory_read", "memory_write", "agent_message", "shell", "ofp_connect"):
        extra = _covered(getattr(child, field), getattr(parent, field))
        if extra:
            problems.append(f"{field} {extra}")
    for flag in ("agent_spawn", "ofp_discover"):
        if getattr(child, flag) and not getattr(parent, flag):
            problems.append(flag)
    return problems


def visible_tools(manifest: AgentManifest, mode: str, available: list[str] | None = None) -> list[str]:
    """The tools the agent may use after profile, allow list, block list and mode.

    With ``available`` (the daemon's real tool names) the result is concrete names; without it,
    the declared patterns (``"*"`` = every tool). An empty list means no tools.
    """
    if manifest.tools_disabled or mode == "observe":
        return []
    granted = _tools_of(effective_capabilities(manifest))
    allow = manifest.tool_allowlist
    if available is not None:
        names = [t for t in available if any(fnmatchcase(t, g) for g in granted)]
        if allow:
            names = [t for t in names if any(fnmatchcase(t, a) for a in allow)]
    elif allow:
        # The allow list narrows, never grants: keep the entries the granted patterns cover.
        names = [a for a in allow if any(fnmatchcase(a, g) for g in granted)]
    else:
        names = list(granted)
    if mode == "assist":
        names = [t for t in sorted(ASSIST_TOOLS) if any(fnmatchcase(t, n) for n in names)]
    return [n for n in names if not any(fnmatchcase(n, b) for b in manifest.tool_blocklist)]


def profile_view(name: str) -> dict[str, Any]:
    """JSON shape of one profile for the API."""
    return {
        "name": name,
        "description": PROFILE_DESCRIPTIONS[name],
        "tools": profile_tools(name),
        "capabilities": implied_capabilities(name).model_dump(mode="json"),
    }

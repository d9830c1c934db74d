"""JSON views of agents: the list summary and the detail.

``provider``/``model`` of ``"default"`` are shown resolved against ``[default_model]`` (the stored
manifest keeps ``"default"``, so changing the config moves every such agent at once).
"""

from __future__ import annotations

import json
from typing import Any

from librefang.config import redact

from librefang_agents.capabilities import effective_capabilities, visible_tools
from librefang_agents.index import Entry, iso
from librefang_agents.manifest import AgentManifest
from librefang_agents.store import AgentRecord

DESCRIPTION_IN_LIST = 500


def resolve_model(provider: str, model: str, default_model: dict[str, str]) -> tuple[str, str]:
    """Replace ``default`` by the configured default provider/model."""
    return (
        default_model["provider"] if provider == "default" else provider,
        default_model["model"] if model == "default" else model,
    )


def summary(row: Entry, children: list[str], default_model: dict[str, str]) -> dict[str, Any]:
    """One item of ``GET /api/agents`` (from the list index; no manifest parsing)."""
    provider, model = resolve_model(row.model_provider, row.model_name, default_model)
    identity = row.identity
    description = row.description
    return {
        "id": row.id,
        "name": row.name,
        "description": description[:DESCRIPTION_IN_LIST],
        "author": row.author,
        "is_hand": False,
        "state": row.state,
        "mode": row.mode,
        "ready": row.state == "Running",
        "created_at": row.created_iso,
        "last_active": row.active_iso,
        "model_provider": provider,
        "model_name": model,
        "profile": row.profile,
        "schedule": row.schedule,
        "tags": list(row.tags),
        "identity": {k: identity.get(k) for k in ("emoji", "avatar_url", "color")},
        "parent_agent_id": row.parent_id,
        "children": children,
        "session_id": row.session_id,
    }


def summary_json(row: Entry, children: list[str], default_model: dict[str, str]) -> bytes:
    """:func:`summary` as JSON, cached on the entry until it (or the default model) changes."""
    key = (default_model["provider"], default_model["model"])
    if row.fragment is None or row.fragment_key != key:
        row.fragment = json.dumps(summary(row, children, default_model), separators=(",", ":")).encode()
        row.fragment_key = key
    return row.fragment


def list_mode(values: list[str], disabled: bool) -> str:
    """``none`` when disabled, ``all`` for an empty list or one holding ``*``, else ``allowlist``."""
    if disabled:
        return "none"
    if not values or "*" in values:
        return "all"
    return "allowlist"


def detail(record: AgentRecord, manifest: AgentManifest, children: list[str], default_model: dict[str, str]) -> dict[str, Any]:
    """``GET /api/agents/{id}``: registry state, resolved model, capabilities, lists and the manifest."""
    provider, model = resolve_model(manifest.model.provider, manifest.model.model, default_model)
    caps = effective_capabilities(manifest)
    schedule = manifest.schedule if isinstance(manifest.schedule, str) else manifest.schedule.model_dump(
        mode="json", exclude_none=True
    )
    return {
        "id": record.id,
        "name": record.name,
        "is_hand": manifest.is_hand,
        "state": record.state,
        "mode": record.mode,
        "ready": record.state == "Running",
        "profile": manifest.profile,
        "created_at": iso(record.created_at),
        "last_active": iso(record.last_active),
        "updated_at": iso(record.updated_at),
        "session_id": record.session_id,
        "parent_agent_id": record.parent_id,
        "children": children,
        "description": manifest.description,
        "author": manifest.author,
        "version": manifest.version,
        "module": manifest.module,
        "tags": list(manifest.tags),
        "schedule": schedule,
        "session_mode": manifest.session_mode,
        "enabled": manifest.enabled,
        "model": {
            "provider": provider,
            "model": model,
            "max_tokens": manifest.model.max_tokens,
            "temperature": manifest.model.temperature,
            "configured_provider": manifest.model.provider,
            "configured_model": manifest.model.model,
        },
        "fallback_models": redact([f.model_dump(mode="json", exclude_none=True) for f in manifest.fallback_models]),
        "system_prompt": manifest.model.system_prompt,
        "capabilities": caps.model_dump(mode="json"),
        "tools": visible_tools(manifest, record.mode),
        "tool_allowlist": list(manifest.tool_allowlist),
        "tool_blocklist": list(manifest.tool_blocklist),
        "tools_disabled": manifest.tools_disabled,
        "skills": list(manifest.skills),
        "skills_mode": list_mode(manifest.skills, manifest.skills_disabled),
        "skills_disabled": manifest.skills_disabled,
        "mcp_servers": list(manifest.mcp_servers),
        "mcp_servers_mode": list_mode(manifest.mcp_servers, manifest.mcp_disabled),
        "mcp_disabled": manifest.mcp_disabled,
        "identity": record.identity,
        "web_search_augmentation": manifest.web_search_augmentation,
        "auto_evolve": manifest.auto_evolve,
        "resources": manifest.resources.model_dump(mode="json"),
        "signed_by": record.signer,
        # Secret-named keys (an inline api_key in [model], say) and URL credentials are hidden.
        "manifest": redact(manifest.model_dump(mode="json", exclude_none=True)),
    }

"""The ``[agents]`` section of ``config.toml`` and the top-level keys the plugin reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AgentsConfig(BaseModel):
    """``[agents]``: limits of the agent registry, workspaces and uploads."""

    model_config = ConfigDict(extra="allow")

    max_agents: int = Field(50_000, ge=1, le=10_000_000, description="Most agents the registry holds")
    max_manifest_bytes: int = Field(1024 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest manifest TOML")
    default_list_limit: int = Field(50, ge=1, le=500, description="GET /api/agents page size without ?limit")
    max_workspace_file_bytes: int = Field(
        1024 * 1024, ge=1024, le=512 * 1024 * 1024, description="Largest file written through the files API"
    )
    max_workspace_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024 * 1024, description="Total size of one agent's workspace"
    )
    max_workspace_entries: int = Field(10_000, ge=10, le=1_000_000, description="Files one workspace may hold")
    require_signed_manifests: bool = Field(False, description="Refuse spawns without a trusted signed manifest")
    spawn_default_agent: bool = Field(True, description="Give a fresh home the default agent")
    default_agent_template: str = Field("assistant", pattern=r"^[A-Za-z0-9_-]{1,64}$")


def default_model(kernel: Any) -> dict[str, str]:
    """``[default_model]`` provider and model (from the section a plugin registered, else the raw file)."""
    raw: Any
    if kernel.config.has_section("default_model"):
        raw = kernel.config.section("default_model").model_dump(mode="json")
    else:
        raw = kernel.config.raw.get("default_model", {})
    if not isinstance(raw, dict):
        raw = {}
    provider = raw.get("provider")
    model = raw.get("model")
    return {
        "provider": provider if isinstance(provider, str) and provider else "auto",
        "model": model if isinstance(model, str) else "",
    }

"""What other plugins may import from the agents plugin.

Get the registry of a running kernel with :func:`registry` and call its methods (all async)::

    from librefang_agents.api import registry

    agents = registry(kernel)
    record = await agents.get(agent_id)          # AgentRecord; 400 / 404 as ApiError
    manifest = record.parsed()                   # AgentManifest
    tools = visible_tools(manifest, record.mode) # what the agent may call

Events published on ``kernel.bus`` (data always has ``agent_id`` and ``name``):
``agent.spawned``, ``agent.killed``, ``agent.config_changed``, ``agent.mode_changed``,
``agent.state_changed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from librefang.errors import BadRequest
from librefang.routing import format_validation_error
from pydantic import ValidationError

from librefang_agents.capabilities import (
    ASSIST_TOOLS,
    MODES,
    PROFILES,
    effective_capabilities,
    implied_capabilities,
    inheritance_violations,
    visible_tools,
)
from librefang_agents.config import default_model
from librefang_agents.manifest import AgentManifest, ManifestCapabilities, ManifestError, parse_manifest
from librefang_agents.schemas import SetModelRequest
from librefang_agents.service import Actor, AgentService, parse_agent_id
from librefang_agents.store import STATES, AgentRecord
from librefang_agents.views import resolve_model
from librefang_agents.workspace import create as _create_workspace
from librefang_agents.workspace import workspace_dir

EVENTS = ("agent.spawned", "agent.killed", "agent.config_changed", "agent.mode_changed", "agent.state_changed")

__all__ = [
    "ASSIST_TOOLS", "EVENTS", "MODES", "PROFILES", "STATES", "Actor", "AgentManifest", "AgentRecord",
    "AgentService", "ManifestCapabilities", "ManifestError", "default_model", "effective_capabilities",
    "implied_capabilities", "inheritance_violations", "parse_agent_id", "parse_manifest", "registry",
    "resolve_model", "visible_tools", "workspace_of", "ensure_workspace", "get_upload", "save_upload",
    "find_upload", "set_model",
]


def registry(kernel: Any) -> AgentService:
    """The agent registry of a started kernel (``KeyError`` when the agents plugin is not running)."""
    return kernel.services["agents"]


def workspace_of(kernel: Any, record: AgentRecord) -> Path:
    """The workspace folder of an agent (``LIBREFANG_HOME/workspaces/agents/<name>``), created (0700)
    if missing: workspaces are made on first use, and a caller of this is about to use it.
    """
    path = workspace_dir(kernel.home, record.name)
    if not path.is_dir():  # one stat when it exists; a spawn itself creates no folder
        _create_workspace(kernel.home, record.name)
    return path


async def ensure_workspace(kernel: Any, record: AgentRecord) -> Path:
    """The agent's workspace folder, created (0700) if it does not exist yet."""
    import asyncio

    return await asyncio.to_thread(_create_workspace, kernel.home, record.name)


async def get_upload(kernel: Any, file_id: str) -> tuple[dict[str, Any], bytes]:
    """An upload's metadata (``file_id, agent_id, filename, content_type, size, sha256, created_at,
    url``) and bytes: 400 ``invalid_file_id`` for a malformed id, 404 ``upload_not_found``."""
    return await kernel.services["agents.files"].get_upload(file_id)


async def save_upload(kernel: Any, agent_id: str, filename: str | None, content_type: str | None,
                      data: bytes) -> dict[str, Any]:
    """Store a file for an agent exactly as ``POST /api/agents/{id}/upload`` does (same limits);
    returns the upload's metadata (see :func:`get_upload`)."""
    return await kernel.services["agents.files"].save_upload(agent_id, filename, content_type, data)


async def find_upload(kernel: Any, agent_id: str, sha256: str) -> dict[str, Any] | None:
    """The metadata of an upload of the agent whose bytes have this SHA-256 (hex), or None: lets a
    caller store the same content once instead of uploading it again."""
    return await kernel.services["agents.files"].find_upload(agent_id, sha256)


async def set_model(kernel: Any, agent_id: str, model: str, provider: str | None = None, *,
                    actor: Actor | None = None) -> AgentRecord:
    """Switch an agent's model (and its provider when given) exactly as ``PUT /api/agents/{id}/model``
    does: the same field limits (400 ``invalid_body``), manifest and capability checks, audit entry
    and ``agent.config_changed`` event."""
    try:
        body = SetModelRequest(model=model, provider=provider)
    except ValidationError as exc:
        raise BadRequest(format_validation_error(exc, "body"), code="invalid_body") from None

    def mutate(data: dict[str, Any]) -> None:
        config = dict(data.get("model") or {})
        config["model"] = body.model
        if body.provider:
            config["provider"] = body.provider
        data["model"] = config

    return await registry(kernel).change(agent_id, mutate, actor=actor or Actor(), what="model")

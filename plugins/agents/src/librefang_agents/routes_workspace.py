"""HTTP routes for workspaces, uploads, templates and profiles."""

from __future__ import annotations

import asyncio
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import BadRequest, NotFound, PayloadTooLarge
from quart import Response, request

from librefang_agents import templates as template_store
from librefang_agents.capabilities import PROFILES, profile_view
from librefang_agents.files import FilesService
from librefang_agents.schemas import (
    FileContent,
    FileDeleted,
    FileList,
    FileWritten,
    Profile,
    SetFileRequest,
    TemplateDetail,
    TemplateList,
    UploadResponse,
)
from librefang_agents.service import parse_agent_id

router = Router("agents_workspace", tags=("agents",))
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain"})


def files() -> FilesService:
    return current_kernel().services["agents.files"]


# -- workspace files -------------------------------------------------------------------------------------
@router.get("/api/agents/<agent_id>/files", cost=2, response=FileList)
async def list_agent_files(agent_id: str) -> dict[str, Any]:
    """Files in the agent's workspace (relative paths, size, modification time)."""
    listing = await files().list_files(agent_id)
    return {"agent_id": parse_agent_id(agent_id), **listing}


@router.get("/api/agents/<agent_id>/files/<path:filename>", cost=2, response=FileContent)
async def get_agent_file(agent_id: str, filename: str) -> dict[str, Any]:
    """One workspace file: UTF-8 text, or base64 for binary content."""
    content = await files().read_file(agent_id, filename)
    return {"agent_id": parse_agent_id(agent_id), **content}


@router.put("/api/agents/<agent_id>/files/<path:filename>", cost=10, body=SetFileRequest, response=FileWritten)
async def set_agent_file(agent_id: str, filename: str, body: SetFileRequest) -> FileWritten:
    """Create or replace a workspace file (folders are created as needed)."""
    result = await files().write_file(agent_id, filename, body.content, body.encoding)
    return FileWritten(
        status="created" if result["created"] else "updated", agent_id=parse_agent_id(agent_id),
        name=result["name"], size=result["size"],
    )


@router.delete("/api/agents/<agent_id>/files/<path:filename>", cost=5, response=FileDeleted)
async def delete_agent_file(agent_id: str, filename: str) -> FileDeleted:
    """Delete one workspace file."""
    name = await files().delete_file(agent_id, filename)
    return FileDeleted(status="deleted", agent_id=parse_agent_id(agent_id), name=name)


# -- uploads -----------------------------------------------------------------------------------------
def upload_body_limit(kernel: Any) -> int:
    """The request body limit of the upload route: ``max_upload_size_bytes`` plus room for the
    multipart framing (it replaces the global 8 MiB ``max_request_body_bytes`` for this route)."""
    return kernel.config.core.max_upload_size_bytes + 64 * 1024


@router.post("/api/agents/<agent_id>/upload", cost=20, response=UploadResponse, max_body=upload_body_limit)
async def upload_file(agent_id: str) -> dict[str, Any]:
    """Upload a file for an agent: multipart/form-data (field ``file``), or the raw body with
    ``Content-Type`` and ``X-Filename``. Limited by ``max_upload_size_bytes``."""
    svc = files()
    await svc.agents.get(agent_id)  # 400/404 before reading the body
    limit = current_kernel().config.core.max_upload_size_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes", code="upload_too_large")
    if request.mimetype == "application/x-www-form-urlencoded":
        raise BadRequest("send the file as multipart/form-data (field 'file') or as the raw body", code="missing_file")
    if request.mimetype == "multipart/form-data":
        form_files = await request.files
        part = form_files.get("file") or next(iter(form_files.values()), None)
        if part is None:
            raise BadRequest("multipart upload has no file part (use the field name 'file')", code="missing_file")
        data = await asyncio.to_thread(part.read, limit + 1)
        filename, content_type = part.filename, part.mimetype
    else:
        data = await request.get_data(cache=False, as_text=False)
        filename, content_type = request.headers.get("X-Filename"), request.mimetype
    return await svc.save_upload(agent_id, filename, content_type, data)


@router.get("/api/uploads/<file_id>", cost=2)
async def serve_upload(file_id: str) -> Response:
    """The bytes of an upload, with the content type recorded at upload time."""
    meta, data = await files().get_upload(file_id)
    response = Response(data, status=200, mimetype=meta["content_type"])
    disposition = "inline" if meta["content_type"] in INLINE_TYPES else "attachment"
    safe = meta["filename"].replace('"', "").replace("\\", "")
    ascii_name = safe.encode("ascii", "replace").decode("ascii").replace("?", "_")
    from urllib.parse import quote

    response.headers["Content-Disposition"] = f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(safe)}"
    response.headers["X-Upload-Sha256"] = meta["sha256"]
    return response


# -- templates and profiles -------------------------------------------------------------------------------
@router.get("/api/templates", cost=2, response=TemplateList)
async def list_agent_templates() -> dict[str, Any]:
    """Agent templates: the bundled set plus the user's own in LIBREFANG_HOME/templates."""
    found = await asyncio.to_thread(template_store.list_templates, current_kernel().home)
    items = [t.summary() for t in found]
    return {"templates": items, "total": len(items)}


async def _template(name: str) -> template_store.Template:
    if not template_store.valid_template_name(name):
        raise BadRequest(f"invalid template name {name!r}: use letters, digits, '-' and '_'", code="invalid_template")
    found = await asyncio.to_thread(template_store.find_template, current_kernel().home, name)
    if found is None:
        raise NotFound(f"template {name!r} not found", code="template_not_found")
    return found


@router.get("/api/templates/<name>", cost=1, response=TemplateDetail)
async def get_agent_template(name: str) -> dict[str, Any]:
    """One template: summary and full manifest."""
    return (await _template(name)).detail()


@router.get("/api/templates/<name>/toml", cost=1)
async def get_agent_template_toml(name: str) -> Response:
    """The template's TOML text, as written."""
    found = await _template(name)
    return Response(found.toml, status=200, mimetype="application/toml")


@router.get("/api/profiles", cost=1, response=list[Profile])
async def list_profiles() -> list[dict[str, Any]]:
    """Tool profiles and the tools and capabilities each grants."""
    return [profile_view(name) for name in PROFILES]


@router.get("/api/profiles/<name>", cost=1, response=Profile)
async def get_profile(name: str) -> dict[str, Any]:
    """One tool profile."""
    if name not in PROFILES:
        raise NotFound(f"profile {name!r} not found: use one of {', '.join(PROFILES)}", code="profile_not_found")
    return profile_view(name)

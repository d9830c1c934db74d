"""Workspace files and uploads of agents (the logic behind the files and upload routes).

Uploads are stored under ``LIBREFANG_HOME/data/uploads/<file_id>`` with a row recording the
agent, original file name, content type, size and SHA-256. They are deleted with their agent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from librefang.errors import BadRequest, Conflict, NotFound, PayloadTooLarge

from librefang_agents import workspace
from librefang_agents.index import iso
from librefang_agents.models import uploads
from librefang_agents.service import AgentService, parse_agent_id

CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
MAX_UPLOADS_PER_AGENT = 1000
LIST_LIMIT = 10_000


def clean_filename(name: str | None) -> str:
    """A safe display name for an upload: the last path component, no control characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ord(ch) >= 32 and ch != "\x7f").strip()
    if base in ("", ".", ".."):
        base = "upload"
    return base[:255]


def clean_content_type(value: str | None) -> str:
    """The media type without parameters, or ``application/octet-stream`` when it is not one."""
    media = (value or "").split(";", 1)[0].strip().lower()
    return media if CONTENT_TYPE.fullmatch(media) else "application/octet-stream"


class FilesService:
    """Workspace files and uploads (``kernel.services["agents.files"]``)."""

    def __init__(self, agents: AgentService) -> None:
        self.agents = agents
        self.kernel = agents.kernel
        self.home: Path = agents.home
        self.config = agents.config
        self.uploads_dir = self.home / "data" / "uploads"

    async def _root(self, agent_id: str) -> Path:
        record = await self.agents.get(agent_id)
        return workspace.workspace_dir(self.home, record.name)

    # -- workspace files --------------------------------------------------------------------------
    async def list_files(self, agent_id: str) -> dict[str, Any]:
        root = await self._root(agent_id)
        return await asyncio.to_thread(workspace.list_files, root, min(LIST_LIMIT, self.config.max_workspace_entries))

    async def read_file(self, agent_id: str, filename: str) -> dict[str, Any]:
        root = await self._root(agent_id)
        return await asyncio.to_thread(workspace.read_file, root, filename, self.config.max_workspace_file_bytes)

    async def write_file(self, agent_id: str, filename: str, content: str, encoding: str = "utf-8") -> dict[str, Any]:
        """Create or replace a workspace file from text (``utf-8``) or ``base64`` content."""
        root = await self._root(agent_id)
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("content is not valid base64", code="invalid_content") from None
        else:
            data = content.encode("utf-8", "surrogatepass")
        result = await asyncio.to_thread(
            workspace.write_file, root, filename, data,
            max_bytes=self.config.max_workspace_file_bytes,
            max_total=self.config.max_workspace_bytes,
            max_entries=self.config.max_workspace_entries,
        )
        return result

    async def delete_file(self, agent_id: str, filename: str) -> str:
        root = await self._root(agent_id)
        return await asyncio.to_thread(workspace.delete_file, root, filename)

    # -- uploads ----------------------------------------------------------------------------------
    async def save_upload(self, agent_id: str, filename: str | None, content_type: str | None, data: bytes) -> dict[str, Any]:
        """Store an uploaded file for an agent; 413 above ``max_upload_size_bytes``."""
        record = await self.agents.get(agent_id)
        limit = self.kernel.config.core.max_upload_size_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"upload is {len(data)} bytes; the limit is {limit}", code="upload_too_large")
        if not data:
            raise BadRequest("the upload is empty", code="empty_upload")
        async with self.kernel.db.begin() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(uploads).where(uploads.c.agent_id == record.id))
            ).scalar_one()
        if count >= MAX_UPLOADS_PER_AGENT:
            raise Conflict(f"agent already has {MAX_UPLOADS_PER_AGENT} uploads", code="upload_limit_reached")
        file_id = str(uuid.uuid4())
        row = {
            "id": file_id,
            "agent_id": record.id,
            "filename": clean_filename(filename),
            "content_type": clean_content_type(content_type),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "created_at": time.time(),
        }
        await asyncio.to_thread(self._write_blob, file_id, data)
        try:
            async with self.kernel.db.begin() as conn:
                await conn.execute(uploads.insert().values(**row))
        except BaseException:
            await asyncio.to_thread(self._delete_blob, file_id)
            raise
        return self._view(row)

    async def find_upload(self, agent_id: str, sha256: str) -> dict[str, Any] | None:
        """An upload of the agent with these bytes (by SHA-256), whose file is still there; else None."""
        agent_id = parse_agent_id(agent_id)
        query = sa.select(uploads).where(uploads.c.agent_id == agent_id, uploads.c.sha256 == sha256.lower())
        async with self.kernel.db.begin() as conn:
            rows = (await conn.execute(query.order_by(uploads.c.created_at).limit(5))).mappings().all()
        for row in rows:
            if await asyncio.to_thread((self.uploads_dir / row["id"]).is_file):
                return self._view(row)
        return None

    def _write_blob(self, file_id: str, data: bytes) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.uploads_dir / f".{file_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.uploads_dir / file_id)

    def _delete_blob(self, file_id: str) -> None:
        (self.uploads_dir / file_id).unlink(missing_ok=True)

    @staticmethod
    def _view(row: Any) -> dict[str, Any]:
        row = dict(row)
        return {
            "file_id": row["id"],
            "agent_id": row["agent_id"],
            "filename": row["filename"],
            "content_type": row["content_type"],
            "size": row["size"],
            "sha256": row["sha256"],
            "created_at": iso(row["created_at"]),
            "url": f"/api/uploads/{row['id']}",
        }

    async def get_upload(self, file_id: str) -> tuple[dict[str, Any], bytes]:
        """An upload's metadata and bytes; 400 for a malformed id, 404 when unknown."""
        try:
            canonical = str(uuid.UUID(file_id))
        except ValueError:
            raise BadRequest(f"invalid file id {file_id!r}: expected a UUID", code="invalid_file_id") from None
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(uploads).where(uploads.c.id == canonical))).mappings().first()
        if row is None:
            raise NotFound(f"upload {file_id} not found", code="upload_not_found")
        try:
            data = await asyncio.to_thread((self.uploads_dir / canonical).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"upload {file_id} not found", code="upload_not_found") from None
        return self._view(row), data

    async def delete_uploads_of(self, agent_id: str) -> int:
        """Delete every upload of an agent (rows and files)."""
        agent_id = parse_agent_id(agent_id)
        async with self.kernel.db.begin() as conn:
            ids = [r[0] for r in (await conn.execute(sa.select(uploads.c.id).where(uploads.c.agent_id == agent_id))).all()]
            await conn.execute(uploads.delete().where(uploads.c.agent_id == agent_id))
        for file_id in ids:
            await asyncio.to_thread(self._delete_blob, file_id)
        return len(ids)

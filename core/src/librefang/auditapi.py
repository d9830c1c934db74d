"""Audit endpoints: recent entries and chain verification."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from librefang import current_kernel
from librefang.routing import Router


class RecentQuery(BaseModel):
    n: int = Field(50, ge=1, le=1000, description="Entries per page")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="Entries to skip (newest first)")


class AuditEntry(BaseModel):
    seq: int
    timestamp: str
    actor: str
    action: str
    target: str
    detail: str
    outcome: str
    request_id: str
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
    offset: int
    limit: int
    tip_hash: str


class AuditVerify(BaseModel):
    valid: bool
    entries: int
    tip_hash: str
    anchor_enabled: bool
    anchor_path: str
    anchor_status: str
    first_broken_seq: int | None = None
    error: str | None = None


def add_routes(router: Router) -> None:
    @router.get("/api/audit/recent", cost=5, query=RecentQuery, response=AuditPage)
    async def audit_recent(query: RecentQuery) -> AuditPage:
        """Newest audit entries first, paginated."""
        kernel = current_kernel()
        items, total = await kernel.audit.recent(query.n, query.offset)
        return AuditPage(items=items, total=total, offset=query.offset, limit=query.n, tip_hash=kernel.audit.tip_hash)

    @router.get("/api/audit/verify", cost=5, response=AuditVerify)
    async def audit_verify() -> dict[str, Any]:
        """Walk the whole chain and compare its tip with the anchor file."""
        kernel = current_kernel()
        result = await kernel.audit.verify()
        return result.to_dict(kernel.audit.anchor_path)

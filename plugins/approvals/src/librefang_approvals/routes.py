"""HTTP routes of approvals: list, create, get, decide (one, a batch, a session), count, audit.

Thin handlers over :class:`~librefang_approvals.service.ApprovalService`.
"""

from __future__ import annotations

import uuid
from typing import Any

from librefang import Router, current_kernel
from librefang.errors import BadRequest, ServiceUnavailable
from quart import g

from librefang_approvals.schemas import (
    Approval,
    ApprovalList,
    ApproveAllRequest,
    ApproveRequest,
    AuditList,
    AuditQuery,
    BatchItem,
    BatchRequest,
    BatchResult,
    Count,
    CreateRequest,
    DecisionResult,
    ListQuery,
    ModifyRequest,
    SessionApprovals,
    SessionDecision,
)
from librefang_approvals.service import ApprovalService

router = Router("approvals", tags=("approvals",))


def service() -> ApprovalService:
    return current_kernel().services["approvals"]


def actor() -> str:
    """Who decides: the authenticated principal of the request."""
    return f"api:{getattr(g, 'principal', None) or 'anonymous'}"


def request_id() -> str:
    return getattr(g, "request_id", "") or ""


def approval_id(value: str) -> str:
    """A request id is a UUID; anything else is 400, not 404."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError):
        raise BadRequest(f"invalid approval id {value[:64]!r}: expected a UUID", code="invalid_approval_id") from None


def session_id(value: str) -> str:
    if not value or len(value) > 64:
        raise BadRequest("invalid session id", code="invalid_session_id")
    return value


def batch_item(row: dict[str, Any]) -> BatchItem:
    return BatchItem(id=row["id"], status="ok", decision=row["status"], decided_at=row["decided_at"])


@router.get("/api/approvals", query=ListQuery, response=ApprovalList)
async def list_approvals(query: ListQuery) -> ApprovalList:
    """Approval requests: pending first, then newest first (``?status=`` filters)."""
    items, total = await service().list(limit=query.limit, offset=query.offset, status=query.status)
    return ApprovalList(approvals=[Approval(**i) for i in items], total=total, offset=query.offset, limit=query.limit)


@router.post("/api/approvals", body=CreateRequest, response=Approval, status=201)
async def create_approval(body: CreateRequest) -> Approval:
    """Register a manual approval request for an agent (404 unknown agent, 429 too many pending)."""
    from librefang_agents import api as agents_api

    kernel = current_kernel()
    if "agents" not in kernel.services:
        raise ServiceUnavailable("the agents plugin is not running", code="agents_unavailable")
    record = await agents_api.registry(kernel).get(body.agent_id)
    row = await service().create(agent_id=record.id, agent_name=record.name, tool_name=body.tool_name,
                                 session_id=body.session_id, description=body.description,
                                 action_summary=kernel.logstream.redact(body.action_summary), source="manual",
                                 actor=actor())
    return Approval(**row)


@router.get("/api/approvals/count", cost=1, response=Count)
async def approval_count() -> Count:
    """Pending requests (for notification badges)."""
    return Count(pending=await service().count_pending())


@router.get("/api/approvals/audit", query=AuditQuery, response=AuditList)
async def approvals_audit(query: AuditQuery) -> AuditList:
    """Decided requests, newest decision first (``?agent_id=``, ``?tool_name=`` filter)."""
    items, total = await service().audit(limit=query.limit, offset=query.offset, agent_id=query.agent_id,
                                         tool_name=query.tool_name)
    return AuditList(entries=[Approval(**i) for i in items], total=total, offset=query.offset, limit=query.limit)


@router.post("/api/approvals/batch", body=BatchRequest, response=BatchResult)
async def batch_resolve(body: BatchRequest) -> BatchResult:
    """Approve or reject up to 100 requests atomically: all are decided, or none (404/409/400)."""
    ids = [approval_id(i) for i in body.ids]
    rows = await service().decide_many(ids, body.decision, by=actor(), request_id=request_id())
    return BatchResult(results=[batch_item(r) for r in rows], count=len(rows))


@router.get("/api/approvals/session/<sid>", response=SessionApprovals)
async def list_approvals_for_session(sid: str) -> SessionApprovals:
    """Pending requests of one session, oldest first."""
    items = await service().pending_of_session(session_id(sid))
    return SessionApprovals(session_id=sid, approvals=[Approval(**i) for i in items], total=len(items))


@router.post("/api/approvals/session/<sid>/approve_all", body=ApproveAllRequest, response=SessionDecision)
async def approve_all_for_session(sid: str, body: ApproveAllRequest) -> SessionDecision:
    """Approve every pending request of a session at once (409 when the pending set changed since
    the caller looked, 400 when one of them needs a TOTP code)."""
    rows = await service().decide_session(session_id(sid), "approve", by=actor(), expected_count=body.expected_count,
                                          expected_ids=body.expected_ids, request_id=request_id())
    return SessionDecision(session_id=sid, decision="approved", results=[batch_item(r) for r in rows], count=len(rows))


@router.post("/api/approvals/session/<sid>/reject_all", response=SessionDecision)
async def reject_all_for_session(sid: str) -> SessionDecision:
    """Reject every pending request of a session at once."""
    rows = await service().decide_session(session_id(sid), "reject", by=actor(), request_id=request_id())
    return SessionDecision(session_id=sid, decision="rejected", results=[batch_item(r) for r in rows], count=len(rows))


@router.get("/api/approvals/<aid>", response=Approval)
async def get_approval(aid: str) -> Approval:
    """One request (404 unknown)."""
    return Approval(**await service().get(approval_id(aid)))


def decided(row: dict[str, Any]) -> DecisionResult:
    return DecisionResult(id=row["id"], status=row["status"], decided_at=row["decided_at"], decided_by=row["decided_by"])


@router.post("/api/approvals/<aid>/approve", body=ApproveRequest, response=DecisionResult)
async def approve_request(aid: str, body: ApproveRequest) -> DecisionResult:
    """Approve a pending request (``totp_code`` when its tool needs one); 404 unknown, 409 already decided."""
    return decided(await service().decide(approval_id(aid), "approve", by=actor(), totp_code=body.totp_code,
                                          request_id=request_id()))


@router.post("/api/approvals/<aid>/reject", response=DecisionResult)
async def reject_request(aid: str) -> DecisionResult:
    """Reject a pending request; 404 unknown, 409 already decided."""
    return decided(await service().decide(approval_id(aid), "reject", by=actor(), request_id=request_id()))


@router.post("/api/approvals/<aid>/modify", body=ModifyRequest, response=DecisionResult)
async def modify_request(aid: str, body: ModifyRequest) -> DecisionResult:
    """Send a pending call back with feedback: the agent reads it and may retry differently."""
    return decided(await service().decide(approval_id(aid), "modify", by=actor(), feedback=body.feedback,
                                          request_id=request_id()))

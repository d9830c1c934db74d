"""Request and response models of the approvals routes (they feed ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ID = Field(min_length=1, max_length=64)
CODE = Field(None, min_length=1, max_length=64)


class DeferredModel(BaseModel):
    """Base of this module's request and response models: pydantic builds each model's validator and
    serializer on first use (``defer_build``), not when the daemon starts and imports this module."""

    model_config = ConfigDict(defer_build=True)


class Strict(DeferredModel):
    model_config = ConfigDict(extra="forbid")


class Approval(DeferredModel):
    id: str
    agent_id: str
    agent_name: str
    tool_name: str
    tool_use_id: str | None = None
    description: str
    action_summary: str
    action: str
    risk_level: Literal["low", "medium", "high", "critical"]
    requested_at: float
    created_at: float
    timeout_secs: int
    expires_at: float
    session_id: str | None = None
    status: Literal["pending", "approved", "rejected", "modified", "timed_out", "skipped"]
    source: Literal["tool_call", "manual"]
    totp_required: bool
    decided_at: float | None = None
    decided_by: str | None = None
    feedback: str | None = None


class ListQuery(Strict):
    limit: int = Field(50, ge=0, le=500)
    offset: int = Field(0, ge=0, le=10_000_000)
    status: Literal["pending", "approved", "rejected", "modified", "timed_out", "skipped"] | None = None


class ApprovalList(DeferredModel):
    approvals: list[Approval]
    total: int
    offset: int
    limit: int


class AuditQuery(Strict):
    limit: int = Field(50, ge=0, le=500)
    offset: int = Field(0, ge=0, le=10_000_000)
    agent_id: str | None = Field(None, max_length=64)
    tool_name: str | None = Field(None, max_length=64)


class AuditList(DeferredModel):
    entries: list[Approval]
    total: int
    offset: int
    limit: int


class CreateRequest(Strict):
    agent_id: str = ID
    tool_name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
    description: str = Field("", max_length=2000)
    action_summary: str = Field("", max_length=500)
    session_id: str | None = Field(None, min_length=1, max_length=64)


class Count(DeferredModel):
    pending: int


class ApproveRequest(Strict):
    totp_code: str | None = CODE


class ModifyRequest(Strict):
    feedback: str = Field(min_length=1, max_length=2000)


class DecisionResult(DeferredModel):
    id: str
    status: Literal["approved", "rejected", "modified"]
    decided_at: float
    decided_by: str | None = None


class BatchRequest(Strict):
    ids: list[str] = Field(min_length=1, max_length=100)
    decision: Literal["approve", "reject"]


class BatchItem(DeferredModel):
    id: str
    status: Literal["ok"]
    decision: Literal["approved", "rejected"]
    decided_at: float


class BatchResult(DeferredModel):
    results: list[BatchItem]
    count: int


class SessionApprovals(DeferredModel):
    session_id: str
    approvals: list[Approval]
    total: int


class ApproveAllRequest(Strict):
    """The optimistic check of ``approve_all``: 409 when the pending set is not what the caller saw."""

    expected_count: int | None = Field(None, ge=0, le=100_000)
    expected_ids: list[str] | None = Field(None, max_length=1000)


class SessionDecision(DeferredModel):
    session_id: str
    decision: Literal["approved", "rejected"]
    results: list[BatchItem]
    count: int


class TotpSetupRequest(Strict):
    current_code: str | None = CODE


class TotpSetupResult(DeferredModel):
    otpauth_uri: str
    secret: str
    qr_code: str
    recovery_codes: list[str]
    message: str


class TotpCodeRequest(Strict):
    code: str = Field(min_length=1, max_length=64)


class TotpMessage(DeferredModel):
    status: str
    message: str


class TotpStatus(DeferredModel):
    enrolled: bool
    confirmed: bool
    enforced: bool
    scope: list[str]
    remaining_recovery_codes: int
    pending_confirmation: bool
    locked: dict[str, float]

"""Approval requests: create, wait for a decision, decide (one, a batch, a session), list, count, audit.

Every request is a row of ``approvals_requests``; a decision is a conditional update from
``pending``, so approving twice (or from two processes at once) is refused with 409 and the
first decision stands. A gated call waits on an in-process future that a decision resolves at once,
and re-reads its row every :data:`POLL_SECS` so a decision made by another daemon process sharing
the database is seen too. Each request and decision is published on ``kernel.bus``
(``approval.requested`` / ``approval.resolved``) and recorded in the audit chain.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from librefang.errors import BadRequest, Conflict, NotFound, TooManyRequests

from librefang_approvals.config import ApprovalConfig
from librefang_approvals.models import requests
from librefang_approvals.totp_store import TotpStore

SOURCE = "approvals"
POLL_SECS = 1.0
SUMMARY_CHARS = 500
DESCRIPTION_CHARS = 2000
FEEDBACK_CHARS = 2000
DECISIONS = {"approve": "approved", "reject": "rejected", "modify": "modified"}
FINAL = ("approved", "rejected", "modified", "timed_out", "skipped")
RISK = {"shell_exec": "critical", "process_start": "critical", "docker_exec": "critical", "file_delete": "high",
        "apply_patch": "high", "agent_spawn": "high", "file_write": "medium", "web_fetch": "medium",
        "agent_send": "medium"}


def risk_of(tool_name: str) -> str:
    """The risk level shown with a request (``low`` for tools not in the table)."""
    return RISK.get(tool_name, "low")


def matches(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches one of the glob ``patterns`` (case-sensitive, like tool names)."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


@dataclass
class Decision:
    """How a request ended (what the gate turns into a verdict)."""

    status: str
    feedback: str | None = None
    decided_by: str | None = None


def view(row: Any) -> dict[str, Any]:
    """The JSON shape of a request (with the dashboard aliases ``action``, ``created_at``)."""
    r = dict(row)
    return {
        "id": r["id"], "agent_id": r["agent_id"], "agent_name": r["agent_name"], "tool_name": r["tool_name"],
        "tool_use_id": r["tool_use_id"], "description": r["description"], "action_summary": r["action_summary"],
        "action": r["action_summary"], "risk_level": r["risk_level"], "requested_at": r["requested_at"],
        "created_at": r["requested_at"], "timeout_secs": r["timeout_secs"], "expires_at": r["expires_at"],
        "session_id": r["session_id"], "status": r["status"], "source": r["source"],
        "totp_required": bool(r["totp_required"]), "decided_at": r["decided_at"], "decided_by": r["decided_by"],
        "feedback": r["feedback"],
    }


class ApprovalService:
    """The approvals of one kernel (``kernel.services["approvals"]``)."""

    def __init__(self, kernel: Any, config: Callable[[], ApprovalConfig], clock: Callable[[], float] = time.time) -> None:
        self.kernel = kernel
        self.config = config
        self.clock = clock
        self.totp = TotpStore(kernel, config, clock)
        self.waiters: dict[str, asyncio.Future[Decision]] = {}

    # -- policy --------------------------------------------------------------------------------------
    def gated(self, tool_name: str) -> bool:
        """Whether a call of ``tool_name`` waits for approval under the current config."""
        config = self.config()
        return not config.auto_approve and matches(tool_name, config.require_approval)

    def needs_totp(self, tool_name: str) -> bool:
        """Whether approving a call of ``tool_name`` needs a TOTP (or recovery) code."""
        config = self.config()
        return config.second_factor == "totp" and (not config.totp_tools or matches(tool_name, config.totp_tools))

    def summarize(self, tool_input: Any) -> str:
        """The call's input as short JSON, with credential shapes and known secret values scrubbed."""
        text = json.dumps(tool_input, ensure_ascii=False, sort_keys=True, default=str)
        text = self.kernel.logstream.redact(text)
        return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "…"

    # -- create -----------------------------------------------------------------------------------------
    async def create(self, *, agent_id: str, agent_name: str, tool_name: str, session_id: str | None,
                     description: str = "", action_summary: str = "", tool_use_id: str | None = None,
                     source: str = "manual", actor: str = "system") -> dict[str, Any]:
        """Store a pending request, publish ``approval.requested`` and audit it. 429 when the agent
        already holds ``max_pending_per_agent`` pending requests."""
        config = self.config()
        now = self.clock()
        row = {
            "id": str(uuid.uuid4()), "agent_id": agent_id, "agent_name": agent_name[:128], "session_id": session_id,
            "tool_name": tool_name, "tool_use_id": tool_use_id, "description": description[:DESCRIPTION_CHARS],
            "action_summary": action_summary[:SUMMARY_CHARS + 1], "risk_level": risk_of(tool_name), "source": source,
            "status": "pending", "totp_required": self.needs_totp(tool_name), "requested_at": now,
            "timeout_secs": config.timeout_secs, "expires_at": now + config.timeout_secs, "decided_at": None,
            "decided_by": None, "feedback": None,
        }
        async with self.kernel.db.begin() as conn:
            pending = (await conn.execute(sa.select(sa.func.count()).select_from(requests).where(
                requests.c.agent_id == agent_id, requests.c.status == "pending"))).scalar_one()
            if pending >= config.max_pending_per_agent:
                raise TooManyRequests(f"agent {agent_name or agent_id} already has {pending} pending approvals",
                                      code="too_many_pending_approvals")
            await conn.execute(sa.insert(requests).values(**row))
        data = view(row)
        self.kernel.bus.publish("approval.requested", data, source=SOURCE)
        await self.kernel.audit.record("ApprovalRequested", actor=actor, target=row["id"], detail={
            "agent_id": agent_id, "tool_name": tool_name, "session_id": session_id, "risk_level": row["risk_level"],
            "source": source}, outcome="pending")
        return data

    # -- read ----------------------------------------------------------------------------------------------
    async def get(self, approval_id: str) -> dict[str, Any]:
        """One request; 404 when unknown."""
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(requests).where(requests.c.id == approval_id))).mappings().first()
        if row is None:
            raise NotFound(f"no approval request {approval_id[:64]!r}", code="approval_not_found")
        return view(row)

    async def list(self, *, limit: int, offset: int, status: str | None = None,
                   session_id: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Pending first, then newest first; with the total matching."""
        where = []
        if status:
            where.append(requests.c.status == status)
        if session_id:
            where.append(requests.c.session_id == session_id)
        pending_first = sa.case((requests.c.status == "pending", 0), else_=1)
        async with self.kernel.db.begin() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(requests).where(*where))).scalar_one()
            rows = (await conn.execute(sa.select(requests).where(*where)
                                       .order_by(pending_first, requests.c.requested_at.desc(), requests.c.id)
                                       .limit(limit).offset(offset))).mappings().all()
        return [view(r) for r in rows], int(total)

    async def count_pending(self) -> int:
        """Pending requests (the notification badge)."""
        async with self.kernel.db.begin() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(requests)
                                           .where(requests.c.status == "pending"))).scalar_one())

    async def audit(self, *, limit: int, offset: int, agent_id: str | None,
                    tool_name: str | None) -> tuple[list[dict[str, Any]], int]:
        """Decided requests, newest decision first."""
        where = [requests.c.status != "pending"]
        if agent_id:
            where.append(requests.c.agent_id == agent_id)
        if tool_name:
            where.append(requests.c.tool_name == tool_name)
        async with self.kernel.db.begin() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(requests).where(*where))).scalar_one()
            rows = (await conn.execute(sa.select(requests).where(*where)
                                       .order_by(requests.c.decided_at.desc(), requests.c.id)
                                       .limit(limit).offset(offset))).mappings().all()
        return [view(r) for r in rows], int(total)

    # -- decide ----------------------------------------------------------------------------------------------
    async def _finish(self, conn: Any, approval_id: str, status: str, by: str, feedback: str | None) -> bool:
        done = await conn.execute(sa.update(requests).where(requests.c.id == approval_id, requests.c.status == "pending")
                                  .values(status=status, decided_at=self.clock(), decided_by=by[:200], feedback=feedback))
        return done.rowcount == 1

    async def _missing_or_decided(self, conn: Any, approval_id: str) -> Exception:
        status = (await conn.execute(sa.select(requests.c.status).where(requests.c.id == approval_id))).scalar()
        if status is None:
            return NotFound(f"no approval request {approval_id[:64]!r}", code="approval_not_found")
        return Conflict(f"approval request {approval_id} is already {status}", code="approval_already_resolved",
                        details={"status": status})

    async def _announce(self, row: dict[str, Any], request_id: str = "") -> None:
        data = view(row)
        waiter = self.waiters.get(row["id"])
        if waiter is not None and not waiter.done():
            waiter.set_result(Decision(row["status"], row["feedback"], row["decided_by"]))
        self.kernel.bus.publish("approval.resolved", data, source=SOURCE)
        await self.kernel.audit.record("ApprovalResolved", actor=row["decided_by"] or "system", target=row["id"], detail={
            "agent_id": row["agent_id"], "tool_name": row["tool_name"], "session_id": row["session_id"],
            "decision": row["status"], "feedback": row["feedback"]}, outcome=row["status"], request_id=request_id)

    async def decide(self, approval_id: str, decision: str, *, by: str, totp_code: str | None = None,
                     feedback: str | None = None, request_id: str = "") -> dict[str, Any]:
        """Approve, reject or modify (with feedback) one pending request: 404 unknown, 409 already
        decided, 400 when its tool needs a TOTP code that is missing or wrong (429 during a lockout)."""
        status = DECISIONS[decision]
        current = await self.get(approval_id)
        if current["status"] != "pending":
            raise Conflict(f"approval request {approval_id} is already {current['status']}",
                           code="approval_already_resolved", details={"status": current["status"]})
        if decision == "approve" and current["totp_required"]:
            # The code is consumed only for a request that can still be approved (checked just above).
            await self.totp.verify(totp_code, "approve")
        async with self.kernel.db.begin() as conn:
            if not await self._finish(conn, approval_id, status, by, feedback):
                raise await self._missing_or_decided(conn, approval_id)
        row = await self.get(approval_id)
        await self._announce(row, request_id)
        return row

    async def decide_many(self, ids: list[str], decision: str, *, by: str, request_id: str = "") -> list[dict[str, Any]]:
        """Approve or reject every request of ``ids`` in one transaction: all or none. 404 names
        unknown ids, 409 names decided ones, 400 when approving one whose tool needs a TOTP code."""
        status = DECISIONS[decision]
        unique = list(dict.fromkeys(ids))
        async with self.kernel.db.begin() as conn:
            rows = {r["id"]: r for r in (await conn.execute(
                sa.select(requests.c.id, requests.c.status, requests.c.totp_required)
                .where(requests.c.id.in_(unique)))).mappings().all()}
            unknown = [i for i in unique if i not in rows]
            if unknown:
                raise NotFound(f"{len(unknown)} unknown approval request(s); nothing was decided",
                               code="approval_not_found", details={"ids": unknown[:100]})
            decided = [i for i in unique if rows[i]["status"] != "pending"]
            if decided:
                raise Conflict(f"{len(decided)} request(s) are already decided; nothing was decided",
                               code="approval_already_resolved", details={"ids": decided[:100]})
            totp_ids = [i for i in unique if rows[i]["totp_required"]]
            if decision == "approve" and totp_ids:
                raise BadRequest("some requests need a TOTP code: approve them one by one; nothing was decided",
                                 code="totp_required", details={"ids": totp_ids[:100]})
            for approval_id in unique:
                if not await self._finish(conn, approval_id, status, by, None):
                    # Decided by someone else between the read and here: the transaction rolls back.
                    raise Conflict(f"request {approval_id} was decided concurrently; nothing was decided",
                                   code="approval_already_resolved", details={"ids": [approval_id]})
        out = []
        for approval_id in unique:
            row = await self.get(approval_id)
            await self._announce(row, request_id)
            out.append(row)
        return out

    async def pending_of_session(self, session_id: str) -> list[dict[str, Any]]:
        """Pending requests of one session, oldest first."""
        async with self.kernel.db.begin() as conn:
            rows = (await conn.execute(sa.select(requests).where(requests.c.session_id == session_id,
                                                                 requests.c.status == "pending")
                                       .order_by(requests.c.requested_at, requests.c.id))).mappings().all()
        return [view(r) for r in rows]

    async def decide_session(self, session_id: str, decision: str, *, by: str, expected_count: int | None = None,
                             expected_ids: list[str] | None = None, request_id: str = "") -> list[dict[str, Any]]:
        """Decide every pending request of a session at once; 409 when ``expected_count`` /
        ``expected_ids`` no longer describe the pending set (a new request landed meanwhile)."""
        pending = await self.pending_of_session(session_id)
        ids = [p["id"] for p in pending]
        if expected_count is not None and expected_count != len(ids):
            raise Conflict(f"the session has {len(ids)} pending approvals, not {expected_count}",
                           code="pending_set_changed", details={"pending_ids": ids[:100]})
        if expected_ids is not None and set(expected_ids) != set(ids):
            raise Conflict("the session's pending approvals changed", code="pending_set_changed",
                           details={"pending_ids": ids[:100]})
        if not ids:
            return []
        return await self.decide_many(ids, decision, by=by, request_id=request_id)

    # -- wait ----------------------------------------------------------------------------------------------------
    async def wait(self, approval_id: str, seconds: float) -> Decision:
        """Wait for the decision on ``approval_id``. At the deadline the request becomes ``timed_out``
        (unless a decision won the race); a cancelled wait marks it ``skipped``."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.waiters[approval_id] = future
        deadline = time.monotonic() + seconds
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(remaining, POLL_SECS))
                except TimeoutError:
                    row = await self.get(approval_id)  # decided by another process?
                    if row["status"] != "pending":
                        return Decision(row["status"], row["feedback"], row["decided_by"])
            return await self._expire(approval_id, "timed_out")
        except asyncio.CancelledError:
            await asyncio.shield(self._expire(approval_id, "skipped"))
            raise
        finally:
            self.waiters.pop(approval_id, None)

    async def _expire(self, approval_id: str, status: str) -> Decision:
        async with self.kernel.db.begin() as conn:
            finished = await self._finish(conn, approval_id, status, "system", None)
        row = await self.get(approval_id)
        if finished:
            await self._announce(row)
        return Decision(row["status"], row["feedback"], row["decided_by"])

    async def expire_overdue(self) -> int:
        """Mark pending requests past their deadline with nobody waiting (manual ones, or ones a
        stopped daemon left behind) ``timed_out``; returns how many."""
        async with self.kernel.db.begin() as conn:
            ids = (await conn.execute(sa.select(requests.c.id).where(
                requests.c.status == "pending", requests.c.expires_at < self.clock()))).scalars().all()
        count = 0
        for approval_id in ids:
            if approval_id in self.waiters:
                continue
            async with self.kernel.db.begin() as conn:
                finished = await self._finish(conn, approval_id, "timed_out", "system", None)
            if finished:  # announced after the commit: the audit chain writes through its own connection
                count += 1
                await self._announce(await self.get(approval_id))
        return count

    async def trim(self, retention_days: int) -> int:
        """Delete decided requests older than ``retention_days`` (0 keeps everything)."""
        if retention_days <= 0:
            return 0
        cutoff = self.clock() - retention_days * 86_400
        async with self.kernel.db.begin() as conn:
            done = await conn.execute(sa.delete(requests).where(requests.c.status != "pending",
                                                                requests.c.decided_at < cutoff))
        return int(done.rowcount or 0)

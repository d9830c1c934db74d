"""HTTP routes for sessions: per agent (list, create, switch, by label, reset, history, export/import)
and global (list, get, delete, label, search, cleanup). Thin handlers over :mod:`session_admin`."""

from __future__ import annotations

from typing import Any

from librefang import Router, current_kernel
from librefang.errors import NotFound

from librefang_runtime import session_admin as admin
from librefang_runtime.routes import flatten
from librefang_runtime.schemas import (
    CreateSessionRequest,
    ExportQuery,
    LabelRequest,
    SearchHit,
    SearchQuery,
    SearchResults,
    SessionExport,
    SessionList,
    SessionListQuery,
    SessionSummary,
    StatusMessage,
)
from librefang_runtime.service import RuntimeService, parse_session_id

router = Router("runtime_sessions", tags=("sessions",))


def service() -> RuntimeService:
    return current_kernel().services["runtime"]


# -- per agent ----------------------------------------------------------------------------------------
@router.get("/api/agents/<agent_id>/sessions", cost=2, response=SessionList)
async def agent_sessions(agent_id: str) -> SessionList:
    """The agent's sessions, most recently active first."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    total, found = await runtime.store.list_sessions(agent_id=record.id, limit=1000)
    return SessionList(sessions=[admin.summary(runtime, s, record.session_id) for s in found], total=total)


@router.post("/api/agents/<agent_id>/sessions", cost=5, body=CreateSessionRequest, response=StatusMessage)
async def create_session(agent_id: str, body: CreateSessionRequest) -> StatusMessage:
    """Create a session and make it the agent's current one."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    info = await admin.create_and_switch(runtime, record, body.label)
    return StatusMessage(status="ok", message="Session created", session_id=info.id, label=info.label)


@router.post("/api/agents/<agent_id>/sessions/<session_id>/switch", cost=2, response=StatusMessage)
async def switch_session(agent_id: str, session_id: str) -> StatusMessage:
    """Make one of the agent's sessions its current one."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    info = await admin.switch(runtime, record, session_id)
    return StatusMessage(status="ok", message="Session switched", session_id=info.id, label=info.label)


@router.get("/api/agents/<agent_id>/sessions/by-label/<label>", cost=1, response=SessionSummary)
async def session_by_label(agent_id: str, label: str) -> SessionSummary:
    """The agent's session with this label."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    info = await runtime.store.by_label(record.id, label[:128])
    if info is None:
        raise NotFound(f"no session labelled {label[:128]!r}", code="session_not_found")
    return admin.summary(runtime, info, record.session_id)


@router.post("/api/agents/<agent_id>/session/reset", cost=5, response=StatusMessage)
async def reset_session(agent_id: str) -> StatusMessage:
    """Delete all the agent's sessions and start an empty one (running turns are stopped first)."""
    runtime = service()
    info = await admin.reset(runtime, await runtime.agents.get(agent_id))
    return StatusMessage(status="ok", message="Session reset", session_id=info.id)


@router.post("/api/agents/<agent_id>/session/reboot", cost=5, response=StatusMessage)
async def reboot_session(agent_id: str) -> StatusMessage:
    """Same as reset: every session of the agent is deleted and an empty one started."""
    runtime = service()
    info = await admin.reset(runtime, await runtime.agents.get(agent_id))
    return StatusMessage(status="ok", message="Session rebooted", session_id=info.id)


@router.post("/api/agents/<agent_id>/session/compact", cost=20, response=StatusMessage)
async def compact_session(agent_id: str) -> StatusMessage:
    """Summarise all but the most recent messages of the agent's current session (LLM; a plain
    summary when the LLM fails)."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    result = await runtime.compact_now(record)
    if result is None:
        return StatusMessage(status="ok", message="Nothing to compact", session_id=record.session_id)
    how = " (plain summary: the LLM call failed)" if result.used_fallback else ""
    return StatusMessage(status="ok", session_id=record.session_id,
                         message=f"Compacted {result.compacted_count} messages into a summary; kept "
                                 f"{result.kept_messages}{how}")


@router.delete("/api/agents/<agent_id>/history", cost=5, response=StatusMessage)
async def clear_history(agent_id: str) -> StatusMessage:
    """Delete every conversation of the agent."""
    runtime = service()
    deleted = await admin.clear_history(runtime, await runtime.agents.get(agent_id))
    return StatusMessage(status="ok", message="All history cleared", deleted=deleted)


@router.get("/api/agents/<agent_id>/sessions/<session_id>/export", cost=2, query=ExportQuery, response=SessionExport)
async def export_session(agent_id: str, session_id: str, query: ExportQuery) -> SessionExport:
    """The session as a JSON document that ``…/sessions/import`` accepts."""
    runtime = service()
    record = await runtime.agents.get(agent_id)
    info = await admin.session_of_agent(runtime, record, session_id)
    return await admin.export(runtime, record, info)


@router.post("/api/agents/<agent_id>/sessions/import", cost=10, body=SessionExport, response=StatusMessage)
async def import_session(agent_id: str, body: SessionExport) -> StatusMessage:
    """Store an exported session as a new session of this agent."""
    runtime = service()
    info = await admin.import_session(runtime, await runtime.agents.get(agent_id), body)
    return StatusMessage(status="ok", message="Session imported successfully", session_id=info.id, label=info.label)


# -- global ----------------------------------------------------------------------------------------
@router.get("/api/sessions", cost=2, query=SessionListQuery, response=SessionList)
async def list_sessions(query: SessionListQuery) -> SessionList:
    """Every session (optionally of one agent), most recently active first, paged."""
    runtime = service()
    agent = await runtime.agents.get(query.agent_id) if query.agent_id else None
    total, found = await runtime.store.list_sessions(agent_id=agent.id if agent else None, limit=query.limit,
                                                     offset=query.offset)
    canonical: dict[str, str] = {}
    for info in found:
        if info.agent_id not in canonical:
            try:
                canonical[info.agent_id] = (await runtime.agents.get(info.agent_id)).session_id
            except Exception:  # noqa: BLE001 - a session whose agent is gone is listed, never canonical
                canonical[info.agent_id] = ""
    return SessionList(sessions=[admin.summary(runtime, s, canonical[s.agent_id]) for s in found], total=total)


@router.get("/api/sessions/search", cost=5, query=SearchQuery, response=SearchResults)
async def search_sessions(query: SearchQuery) -> SearchResults:
    """Messages matching every word of ``q`` (best first), optionally of one agent."""
    runtime = service()
    agent = await runtime.agents.get(query.agent_id) if query.agent_id else None
    hits = await runtime.store.search(query.q, agent_id=agent.id if agent else None, limit=query.limit)
    results = [SearchHit(**{**h, "created_at": admin.iso(h["created_at"])}) for h in hits]
    return SearchResults(results=results, total=len(results))


@router.post("/api/sessions/cleanup", cost=10, response=StatusMessage)
async def cleanup_sessions() -> StatusMessage:
    """Delete sessions of agents that no longer exist, and idle ones past ``session_retention_days``."""
    deleted = await admin.cleanup(service())
    return StatusMessage(status="ok", message=f"Deleted {deleted} sessions", deleted=deleted)


async def _session(session_id: str) -> Any:
    runtime = service()
    info = await runtime.store.get(parse_session_id(session_id))
    if info is None:
        raise NotFound(f"session {session_id} not found", code="session_not_found")
    return runtime, info


@router.get("/api/sessions/<session_id>", cost=1)
async def get_session(session_id: str) -> dict[str, Any]:
    """One session with its messages (flattened as in ``GET /api/agents/{id}/session``)."""
    runtime, info = await _session(session_id)
    stored = await runtime.store.load(info.id)
    return {"session_id": info.id, "agent_id": info.agent_id, "label": info.label,
            "message_count": info.message_count, "created_at": admin.iso(info.created_at),
            "updated_at": admin.iso(info.updated_at), "active": runtime.active(info.id),
            "messages": [m.model_dump(exclude_none=True) for m in flatten(stored)]}


@router.delete("/api/sessions/<session_id>", cost=5, response=StatusMessage)
async def delete_session(session_id: str) -> StatusMessage:
    """Delete a session and its messages (a turn running in it is stopped first)."""
    runtime, info = await _session(session_id)
    await admin.delete_sessions(runtime, [(info.id, info.agent_id)])
    return StatusMessage(status="ok", message="Session deleted", session_id=info.id)


@router.put("/api/sessions/<session_id>/label", cost=2, body=LabelRequest, response=StatusMessage)
async def label_session(session_id: str, body: LabelRequest) -> StatusMessage:
    """Set (or clear, with null) a session's label; labels are unique per agent (409)."""
    runtime, info = await _session(session_id)
    updated = await runtime.store.set_label(info.id, body.label)
    if updated is None:
        raise NotFound(f"session {session_id} not found", code="session_not_found")
    return StatusMessage(status="ok", message="Label updated", session_id=info.id, label=updated.label)

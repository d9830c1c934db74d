"""Session management without HTTP: create and switch, reset, clear, export and import, cleanup.

The agent's canonical session is the agents registry's ``session_id`` (moved with
``AgentService.touch``). Anything that deletes a session first stops the turn running in it, so a
run never writes into a session that is gone.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

from librefang.errors import BadRequest, NotFound
from librefang_providers.api import Message

from librefang_runtime.history import content_to_json, message_from_json
from librefang_runtime.schemas import SessionExport, SessionSummary
from librefang_runtime.sessions import SessionInfo


def iso(ts: float) -> str:
    """An epoch timestamp as ISO 8601 UTC."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary(runtime: Any, info: SessionInfo, canonical: str | None) -> SessionSummary:
    return SessionSummary(
        session_id=info.id, agent_id=info.agent_id, label=info.label, message_count=info.message_count,
        created_at=iso(info.created_at), updated_at=iso(info.updated_at), active=runtime.active(info.id),
        is_canonical=info.id == canonical,
    )


async def session_of_agent(runtime: Any, record: Any, session_id: str) -> SessionInfo:
    """The session ``session_id`` of this agent: 400 for a malformed id, 404 when it is not the agent's."""
    from librefang_runtime.service import parse_session_id

    session_id = parse_session_id(session_id)
    info = await runtime.store.get(session_id)
    if info is None or info.agent_id != record.id:
        raise NotFound(f"session {session_id} not found for this agent", code="session_not_found")
    return info


async def create_and_switch(runtime: Any, record: Any, label: str | None) -> SessionInfo:
    """A new empty session for the agent, made its canonical session."""
    info = await runtime.store.create(record.id, label)
    await runtime.agents.touch(record.id, info.id)
    return info


async def switch(runtime: Any, record: Any, session_id: str) -> SessionInfo:
    """Make an existing session of the agent its canonical one."""
    info = await session_of_agent(runtime, record, session_id)
    await runtime.agents.touch(record.id, info.id)
    return info


async def delete_sessions(runtime: Any, pairs: list[tuple[str, str]]) -> int:
    """Stop the turns running in these (session, agent) pairs, then delete the sessions."""
    for session_id, agent_id in pairs:
        await runtime.stop(agent_id, session_id)
    return await runtime.store.delete([session_id for session_id, _ in pairs])


async def reset(runtime: Any, record: Any) -> SessionInfo:
    """Delete every session of the agent and give it a new empty canonical session."""
    await runtime.stop(record.id)
    await delete_sessions(runtime, await runtime.store.session_ids(agent_id=record.id))
    return await create_and_switch(runtime, record, None)


async def clear_history(runtime: Any, record: Any) -> int:
    """Delete every session of the agent; the canonical pointer moves to a fresh id (created on use)."""
    await runtime.stop(record.id)
    deleted = await delete_sessions(runtime, await runtime.store.session_ids(agent_id=record.id))
    await runtime.agents.touch(record.id, str(uuid.uuid4()))
    return deleted


async def export(runtime: Any, record: Any, info: SessionInfo) -> SessionExport:
    """The session as a portable document (content blocks as stored)."""
    stored = await runtime.store.load(info.id)
    chars = sum(len(str(content_to_json(s.message))) for s in stored)
    return SessionExport.model_validate({
        "version": 1, "agent_name": record.name, "agent_id": record.id, "session_id": info.id,
        "label": info.label, "context_window_tokens": chars // 4, "exported_at": iso(time.time()),
        "metadata": {"message_count": info.message_count, "created_at": iso(info.created_at)},
        "messages": [{"role": s.message.role, "content": content_to_json(s.message), "timestamp": iso(s.created_at)}
                     for s in stored],
    })


def parse_messages(document: SessionExport, limit: int) -> list[Message]:
    """The messages of an import document; 400 naming the first bad one."""
    if len(document.messages) > limit:
        raise BadRequest(f"a session holds at most {limit} messages", code="too_many_messages")
    out = []
    for index, item in enumerate(document.messages):
        content = item.content
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        try:
            out.append(message_from_json(item.role, blocks))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"messages[{index}]: {type(exc).__name__}: {exc}", code="invalid_session") from None
    return out


async def import_session(runtime: Any, record: Any, document: SessionExport) -> SessionInfo:
    """Store an exported session as a new session of the agent (never overwrites one)."""
    items = parse_messages(document, runtime.config.max_session_messages)
    label = document.label
    if label is not None and await runtime.store.by_label(record.id, label) is not None:
        label = None  # the label is taken here: import the conversation without it
    info = await runtime.store.create(record.id, label)
    await runtime.store.add_messages(info.id, items)
    return await runtime.store.get(info.id) or info


async def cleanup(runtime: Any) -> int:
    """Delete sessions whose agent no longer exists, and those idle longer than
    ``[runtime] session_retention_days`` (when set)."""
    from librefang.errors import ApiError

    doomed: list[tuple[str, str]] = []
    known: dict[str, bool] = {}
    for session_id, agent_id in await runtime.store.session_ids():
        if agent_id not in known:
            try:
                await runtime.agents.get(agent_id)
                known[agent_id] = True
            except ApiError:
                known[agent_id] = False
        if not known[agent_id]:
            doomed.append((session_id, agent_id))
    days = runtime.config.session_retention_days
    if days:
        idle = await runtime.store.session_ids(idle_before=time.time() - days * 86400)
        doomed += [pair for pair in idle if pair not in doomed and not runtime.active(pair[0])]
    return await delete_sessions(runtime, doomed)

"""Sessions in the database, and one run at a time per session.

Each message is written the moment the loop commits it, so a turn interrupted by a crash or a
cancellation leaves what it had acknowledged; the repair pass of the next turn closes any tool
call left without a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from librefang_providers.api import Message, Usage
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from librefang_runtime.history import (
    Window,
    WindowCache,
    content_to_json,
    encode_content,
    message_from_json,
    stored_form,
    text_of,
)
from librefang_runtime.models import messages, sessions, usage
from librefang_runtime.search_index import SearchIndexer
from librefang_runtime.session_writes import commit_rows


@dataclass
class SessionInfo:
    """One session row."""

    id: str
    agent_id: str
    label: str | None
    message_count: int
    created_at: float
    updated_at: float
    summary: str | None = None


@dataclass
class _Write:
    """Messages (and a usage row) waiting for the next group commit."""

    session_id: str
    items: list[Message]
    usage_row: dict[str, Any] | None
    at: float
    done: asyncio.Future[None]


@dataclass
class StoredMessage:
    """A message with its storage time."""

    message: Message
    created_at: float


def _info(row: Any) -> SessionInfo:
    return SessionInfo(row.id, row.agent_id, row.label, row.message_count, row.created_at, row.updated_at,
                       row.summary)


def _copy_info(info: SessionInfo) -> SessionInfo:
    return SessionInfo(info.id, info.agent_id, info.label, info.message_count, info.created_at, info.updated_at,
                       info.summary)


def _first_session(conn: Any, session_id: str) -> Any:
    return conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()


def _ensure_session(conn: Any, session_id: str, agent_id: str, now: float) -> Any:
    """Insert the session unless it exists (kept as it is then), and return its row."""
    values = {"id": session_id, "agent_id": agent_id, "label": None, "message_count": 0,
              "created_at": now, "updated_at": now}
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite_insert if dialect == "sqlite" else pg_insert
        conn.execute(insert(sessions).values(**values).on_conflict_do_nothing(index_elements=["id"]))
    elif _first_session(conn, session_id) is None:
        conn.execute(sessions.insert().values(**values))
    return _first_session(conn, session_id)


def _read_messages(conn: Any, session_id: str, limit: int | None) -> list[StoredMessage]:
    """The session's last ``limit`` messages (None: all), decoded, oldest first."""
    query = sa.select(messages.c.role, messages.c.content, messages.c.created_at) \
        .where(messages.c.session_id == session_id).order_by(messages.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).all()
    return [StoredMessage(message_from_json(r.role, json.loads(r.content)), r.created_at) for r in reversed(rows)]


def _read_window(conn: Any, session_id: str, limit: int | None) -> tuple[Any, list[StoredMessage]]:
    """The session's row (None when it does not exist) and its last ``limit`` messages, decoded."""
    row = _first_session(conn, session_id)
    if row is None:
        return None, []
    return row, _read_messages(conn, session_id, limit)


def _open_window(conn: Any, session_id: str, agent_id: str, now: float, limit: int | None) -> tuple[Any, list[StoredMessage]]:
    """The session's row, created for ``agent_id`` unless it exists (write first: see ``ensure``),
    and its last ``limit`` messages."""
    row = _ensure_session(conn, session_id, agent_id, now)
    return row, _read_messages(conn, session_id, limit)


class SessionStore:
    """Queries over the runtime's tables through the kernel's database.

    With SQLite (one daemon per database file) the decoded recent history of busy sessions is kept
    in a :class:`~librefang_runtime.history.WindowCache`, exact because every write goes through
    this class; with PostgreSQL other daemons may write the same sessions, so every turn reads."""

    def __init__(self, db: Any, max_messages: int = 2000) -> None:
        self.db = db
        self.max_messages = max_messages
        # SQLite has one writer at a time: queueing our writes here (FIFO) costs less than hundreds of
        # concurrent transactions polling its busy handler, and never runs into its lock timeout.
        self._write_lock = asyncio.Lock()
        self._pending: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.windows: WindowCache | None = WindowCache() if db.is_sqlite else None
        self.indexer = SearchIndexer(db)  # the FTS index follows the commits, off the reply's path

    def _forget(self, *session_ids: str) -> None:
        if self.windows is not None:
            for session_id in session_ids:
                self.windows.invalidate(session_id)

    def writing(self) -> Any:
        """Hold this while writing to SQLite (a no-op for other databases)."""
        return self._write_lock if self.db.is_sqlite else contextlib.nullcontext()

    async def get(self, session_id: str) -> SessionInfo | None:
        """The session's row (from the window cache when the session is in it, else one read)."""
        window = self.windows.peek(session_id) if self.windows is not None else None
        if window is not None:
            return _copy_info(window.info)
        row = await self.db.run(_first_session, session_id)
        return _info(row) if row is not None else None

    async def agent_of(self, session_id: str, limit: int | None = None) -> str | None:
        """The id of the agent owning the session (None when it does not exist). A session in the
        window cache costs nothing; with the window cache (SQLite), a session that exists is read
        with its last ``limit`` messages and cached, so the turn that asked opens it without a read."""
        windows = self.windows
        if windows is None:
            row = await self.db.run(_first_session, session_id)
            return row.agent_id if row is not None else None
        window = windows.peek(session_id)
        if window is not None:
            return window.info.agent_id
        token = windows.begin_read(session_id)
        installed: Window | None = None
        try:
            row, stored = await self._tx(_read_window, session_id, limit)
            if row is not None:
                installed = Window(_info(row), stored, limit)
        finally:
            windows.end_read(session_id, token, installed)
        return row.agent_id if row is not None else None

    async def ensure(self, session_id: str, agent_id: str) -> SessionInfo:
        """The session, created for ``agent_id`` when it does not exist yet (the caller checks ownership).

        One transaction that writes first (insert unless present, then read the row): a transaction
        that read before writing could fail under SQLite's snapshot rules when another writer went
        first, and one transaction is one hop instead of a read, an insert and a read again."""
        now = time.time()
        try:
            async with self.writing():
                row = await self._tx(_ensure_session, session_id, agent_id, now)
        except IntegrityError:  # created concurrently on a database without ON CONFLICT: the winner's row
            row = await self.db.run(_first_session, session_id)
        assert row is not None
        return _info(row)

    async def append(self, session_id: str, message: Message) -> None:
        """Store ``message`` at the end of the session; the oldest go beyond ``max_messages``."""
        await self.write(session_id, [message])

    async def write(self, session_id: str, items: list[Message], usage_row: dict[str, Any] | None = None) -> None:
        """Append ``items`` (and record a turn's usage); returns once they are committed. The oldest
        messages go beyond ``max_messages``.

        Group commit: writes that arrive while a transaction is in flight are committed together in
        the next one, so concurrent turns share the per-transaction cost instead of queueing one by
        one behind SQLite's single writer."""
        if not items and usage_row is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(session_id, list(items), usage_row, time.time(), done))
        if self._flusher is None or self._flusher.done():
            # Its own task: a caller that is cancelled must not strand the writes of the others.
            self._flusher = asyncio.ensure_future(self._flush())
        await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._commit(batch)
            except Exception:
                # One bad write must not fail the others: retry them one by one.
                for entry in batch:
                    try:
                        await self._commit([entry])
                    except Exception as exc:
                        if not entry.done.done():
                            entry.done.set_exception(exc)
                    else:
                        if not entry.done.done():
                            entry.done.set_result(None)
            else:
                for entry in batch:
                    if not entry.done.done():
                        entry.done.set_result(None)

    async def _tx(self, fn: Any, *args: Any) -> Any:
        """``fn(conn, *args)`` in one transaction (``Database.run``: with a SQLite file, one hop to a
        database thread instead of one per statement, commit and reset)."""
        return await self.db.run(fn, *args)

    async def _commit(self, batch: list[_Write]) -> None:
        rows = []
        contents: list[tuple[list[dict[str, Any]], bool]] = []  # each row's content and whether it is flat
        for entry in batch:
            for message in entry.items:
                content, flat, text = stored_form(message)
                contents.append((content, flat))
                rows.append({"session_id": entry.session_id, "role": message.role, "created_at": entry.at,
                             "text": text, "content": encode_content(content, flat)})
        added: dict[str, int] = {}
        for entry in batch:
            if entry.items:
                added[entry.session_id] = added.get(entry.session_id, 0) + len(entry.items)
        usage_rows = [e.usage_row for e in batch if e.usage_row is not None]
        now = time.time()
        windows = self.windows
        if windows is not None:
            for entry in batch:
                if entry.items:
                    windows.begin_write(entry.session_id)
        totals: dict[str, int] | None = None
        try:
            async with self.writing():
                totals = await self.db.run(commit_rows, rows, added, usage_rows, now, self.max_messages)
            self.indexer.written(len(rows))
        finally:
            if windows is not None:
                # The windows get what the database now holds, decoded as a read would decode it; a
                # failed (or cancelled: outcome unknown) write makes the next turn read again.
                at = 0
                for entry in batch:
                    start, at = at, at + len(entry.items)
                    if not entry.items:
                        continue
                    total = totals.get(entry.session_id) if totals is not None else None
                    if total is None:
                        windows.end_write(entry.session_id, None)
                        continue
                    # Flat content decodes from its dicts to what json.loads of its JSON would give
                    # (str, bool and None survive the round trip unchanged); the rest is parsed.
                    decoded = [StoredMessage(message_from_json(
                        rows[i]["role"], contents[i][0] if contents[i][1] else json.loads(rows[i]["content"])),
                        entry.at) for i in range(start, at)]
                    windows.end_write(entry.session_id, decoded, total, now)

    async def aclose(self) -> None:
        """Wait for writes in flight (plugin shutdown)."""
        if self._flusher is not None and not self._flusher.done():
            await self._flusher
        await self.indexer.aclose()

    async def open_turn(self, session_id: str, agent_id: str, limit: int | None) -> tuple[SessionInfo, list[StoredMessage]]:
        """The session (created for ``agent_id`` when new) and its most recent messages. A session in
        the window cache costs nothing. Another costs, with the window cache (SQLite, where every
        transaction goes to the one database thread anyway), one transaction that writes first (the
        session's row unless it exists: as :meth:`ensure`) and then reads; elsewhere one read-only
        transaction, and a second one that creates a new session (a read that turned into a write
        could fail under SQLite's snapshot rules when another writer went first)."""
        windows = self.windows
        if windows is not None:
            window = windows.get(session_id, limit)
            if window is not None:
                items = window.items if limit is None else window.items[-limit:] if limit else []
                return _copy_info(window.info), list(items)
            token = windows.begin_read(session_id)
        installed: Window | None = None
        try:
            if windows is not None:
                async with self.writing():
                    row, stored = await self._tx(_open_window, session_id, agent_id, time.time(), limit)
                info = _info(row)
            else:
                row, stored = await self._tx(_read_window, session_id, limit)
                if row is None:
                    info = await self.ensure(session_id, agent_id)
                    stored = []
                else:
                    info = _info(row)
            installed = Window(_copy_info(info), list(stored), limit)
        finally:
            if windows is not None:
                windows.end_read(session_id, token, installed)
        return info, stored

    async def load(self, session_id: str, limit: int | None = None) -> list[StoredMessage]:
        """The session's messages in order; with ``limit``, only the most recent ones."""
        query = sa.select(messages.c.role, messages.c.content, messages.c.created_at) \
            .where(messages.c.session_id == session_id).order_by(messages.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredMessage(message_from_json(r.role, json.loads(r.content)), r.created_at) for r in reversed(rows)]

    # -- session management ---------------------------------------------------------------------------
    async def create(self, agent_id: str, label: str | None = None, session_id: str | None = None) -> SessionInfo:
        """A new empty session of ``agent_id`` (``Conflict`` when the label is taken for this agent)."""
        if label is not None:
            await self._check_label(agent_id, label, None)
        now = time.time()
        new_id = session_id or str(uuid.uuid4())
        async with self.db.begin() as conn:
            await conn.execute(sessions.insert().values(
                id=new_id, agent_id=agent_id, label=label, message_count=0, created_at=now, updated_at=now))
        self._forget(new_id)
        found = await self.get(new_id)
        assert found is not None
        return found

    async def _check_label(self, agent_id: str, label: str, session_id: str | None) -> None:
        from librefang.errors import Conflict

        taken = await self.by_label(agent_id, label)
        if taken is not None and taken.id != session_id:
            raise Conflict(f"the agent already has a session labelled {label!r}", code="label_taken")

    async def by_label(self, agent_id: str, label: str) -> SessionInfo | None:
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(sessions).where(
                sessions.c.agent_id == agent_id, sessions.c.label == label))).first()
        return _info(row) if row is not None else None

    async def set_label(self, session_id: str, label: str | None) -> SessionInfo | None:
        """Set or clear a session's label (unique per agent); None when the session does not exist."""
        found = await self.get(session_id)
        if found is None:
            return None
        if label is not None:
            await self._check_label(found.agent_id, label, session_id)
        async with self.db.begin() as conn:
            await conn.execute(sessions.update().where(sessions.c.id == session_id).values(label=label))
        self._forget(session_id)
        found.label = label
        return found

    async def list_sessions(self, *, agent_id: str | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[SessionInfo]]:
        """(total, one page of sessions), newest activity first."""
        where = [sessions.c.agent_id == agent_id] if agent_id is not None else []
        async with self.db.begin() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(sessions).where(*where))).scalar_one()
            rows = (await conn.execute(sa.select(sessions).where(*where)
                                       .order_by(sessions.c.updated_at.desc(), sessions.c.id)
                                       .limit(limit).offset(offset))).all()
        return total, [_info(r) for r in rows]

    async def clear(self, session_id: str) -> None:
        """Remove every message of a session (the session stays)."""
        try:
            async with self.db.begin() as conn:
                await conn.execute(messages.delete().where(messages.c.session_id == session_id))
                await conn.execute(sessions.update().where(sessions.c.id == session_id).values(
                    message_count=0, updated_at=time.time()))
        finally:  # also when the outcome is unknown (cancelled during the commit)
            self._forget(session_id)

    async def delete(self, session_ids: list[str]) -> int:
        """Delete sessions and their messages; returns how many sessions existed."""
        if not session_ids:
            return 0
        try:
            async with self.db.begin() as conn:
                await conn.execute(messages.delete().where(messages.c.session_id.in_(session_ids)))
                result = await conn.execute(sessions.delete().where(sessions.c.id.in_(session_ids)))
        finally:
            self._forget(*session_ids)
        return result.rowcount or 0

    async def session_ids(self, *, agent_id: str | None = None, idle_before: float | None = None) -> list[tuple[str, str]]:
        """(session id, agent id) of every session, optionally of one agent or idle since ``idle_before``."""
        query = sa.select(sessions.c.id, sessions.c.agent_id)
        if agent_id is not None:
            query = query.where(sessions.c.agent_id == agent_id)
        if idle_before is not None:
            query = query.where(sessions.c.updated_at < idle_before)
        async with self.db.begin() as conn:
            return [(r.id, r.agent_id) for r in (await conn.execute(query)).all()]

    async def add_messages(self, session_id: str, items: list[Message]) -> None:
        """Append several messages at once (import)."""
        for item in items:
            await self.append(session_id, item)

    async def search(self, text: str, *, agent_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Messages whose text matches every word of ``text`` (FTS5 with BM25 ranking on SQLite,
        case-insensitive substring match elsewhere), best first."""
        words = re.findall(r"\w+", text)
        if not words:
            return []
        columns = (messages.c.id, messages.c.session_id, messages.c.role, messages.c.text, messages.c.created_at,
                   sessions.c.agent_id, sessions.c.label)
        joined = messages.join(sessions, sessions.c.id == messages.c.session_id)
        if self.db.is_sqlite:
            match = " ".join('"' + w.replace('"', "") + '"' for w in words[:32])
            query = sa.select(*columns, sa.literal_column("bm25(runtime_messages_fts)").label("rank")) \
                .select_from(joined.join(sa.table("runtime_messages_fts"),
                                         sa.literal_column("runtime_messages_fts.rowid") == messages.c.id)) \
                .where(sa.literal_column("runtime_messages_fts").op("MATCH")(match)) \
                .order_by(sa.literal_column("rank"))
        else:
            query = sa.select(*columns).select_from(joined) \
                .where(*[messages.c.text.ilike(f"%{w}%") for w in words[:32]]).order_by(messages.c.id.desc())
        if agent_id is not None:
            query = query.where(sessions.c.agent_id == agent_id)
        await self.indexer.catch_up()  # every message committed so far is in the index
        async with self.db.begin() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [{"session_id": r.session_id, "agent_id": r.agent_id, "label": r.label, "role": r.role,
                 "snippet": _snippet(r.text, words), "created_at": r.created_at} for r in rows]

    async def compact_prefix(self, session_id: str, count: int, summary_message: Message, summary: str) -> None:
        """Replace the first ``count`` messages by ``summary_message`` (which takes the first one's place,
        so order is kept) and remember ``summary`` as the session's compacted summary."""
        payload = encode_content(content_to_json(summary_message))
        try:
            async with self.db.begin() as conn:
                ids = [r.id for r in (await conn.execute(
                    sa.select(messages.c.id).where(messages.c.session_id == session_id)
                    .order_by(messages.c.id).limit(count))).all()]
                if not ids:
                    return
                first = (await conn.execute(
                    sa.select(messages.c.created_at).where(messages.c.id == ids[0]))).scalar_one()
                await conn.execute(messages.delete().where(messages.c.id.in_(ids)))
                await conn.execute(messages.insert().values(
                    id=ids[0], session_id=session_id, role=summary_message.role, content=payload, created_at=first,
                    text=text_of(summary_message)))
                await conn.execute(sessions.update().where(sessions.c.id == session_id).values(
                    message_count=sessions.c.message_count - len(ids) + 1, summary=summary, updated_at=time.time()))
        finally:
            self._forget(session_id)

    @staticmethod
    def usage_row(*, agent_id: str, session_id: str, provider: str, model: str, usage_: Usage,
                  cost_usd: float | None, iterations: int, outcome: str = "ok", error: str | None = None,
                  latency_ms: float = 0.0, traces: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The ``runtime_usage`` row of one turn: usage, outcome, latency and its decision traces."""
        if not traces:  # a turn without tool calls (most): nothing to count or encode
            return {
                "agent_id": agent_id, "session_id": session_id, "provider": provider, "model": model,
                "input_tokens": usage_.input_tokens, "output_tokens": usage_.output_tokens,
                "cache_read_tokens": usage_.cache_read_tokens, "cache_write_tokens": usage_.cache_write_tokens,
                "cost_usd": cost_usd, "iterations": iterations, "created_at": time.time(), "outcome": outcome,
                "error": error[:200] if error else None, "latency_ms": latency_ms, "tool_calls": 0,
                "tool_errors": 0, "traces": None,
            }
        return {
            "agent_id": agent_id, "session_id": session_id, "provider": provider, "model": model,
            "input_tokens": usage_.input_tokens, "output_tokens": usage_.output_tokens,
            "cache_read_tokens": usage_.cache_read_tokens, "cache_write_tokens": usage_.cache_write_tokens,
            "cost_usd": cost_usd, "iterations": iterations, "created_at": time.time(), "outcome": outcome,
            "error": error[:200] if error else None, "latency_ms": latency_ms, "tool_calls": len(traces),
            "tool_errors": sum(1 for t in traces if t.get("is_error")),
            "traces": json.dumps(traces, ensure_ascii=False, default=str) if traces else None,
        }

    async def turns(self, agent_id: str, *, outcome: str | None = None, limit: int = 100,
                    offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """(total, one page of the agent's turns, newest first), optionally of one outcome."""
        where = [usage.c.agent_id == agent_id] + ([usage.c.outcome == outcome] if outcome else [])
        async with self.db.begin() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(usage).where(*where))).scalar_one()
            rows = (await conn.execute(sa.select(usage).where(*where).order_by(usage.c.id.desc())
                                       .limit(limit).offset(offset))).all()
        return total, [dict(r._mapping) for r in rows]

    async def metrics(self, agent_id: str) -> dict[str, Any]:
        """Totals over every stored turn of an agent."""
        c = usage.c
        query = sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(c.input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.output_tokens), 0), sa.func.coalesce(sa.func.sum(c.tool_calls), 0),
            sa.func.coalesce(sa.func.sum(c.tool_errors), 0),
            sa.func.coalesce(sa.func.sum(sa.case((c.outcome != "ok", 1), else_=0)), 0),
            sa.func.coalesce(sa.func.avg(c.latency_ms), 0.0), sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0),
            sa.func.max(c.created_at),
        ).where(c.agent_id == agent_id)
        async with self.db.begin() as conn:
            row = (await conn.execute(query)).one()
        return {"turns": row[0], "input_tokens": int(row[1]), "output_tokens": int(row[2]),
                "tool_calls": int(row[3]), "tool_errors": int(row[4]), "errors": int(row[5]),
                "avg_response_ms": round(float(row[6]), 3), "cost_usd": round(float(row[7]), 6),
                "last_turn_at": row[8]}

    async def usage_of(self, agent_id: str) -> list[dict[str, Any]]:
        """Every stored turn usage of an agent, oldest first."""
        async with self.db.begin() as conn:
            rows = (await conn.execute(
                sa.select(usage).where(usage.c.agent_id == agent_id).order_by(usage.c.id))).all()
        return [dict(row._mapping) for row in rows]


def _snippet(text: str, words: list[str], width: int = 160) -> str:
    """A window of ``text`` around the first matched word."""
    lower = text.lower()
    at = min((i for i in (lower.find(w.lower()) for w in words) if i >= 0), default=0)
    start = max(0, at - width // 3)
    piece = text[start:start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")

"""The commit of a turn's rows: the pysqlite path (straight to the driver's cursor) writes exactly
what the SQLAlchemy Core path (other drivers) writes, trimming included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from librefang_providers.api import Usage
from librefang_runtime.models import messages, metadata, sessions, usage
from librefang_runtime.session_writes import commit_rows
from librefang_runtime.sessions import SessionStore
from sqlalchemy.ext.asyncio import create_async_engine


def _batches() -> list[tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]], float]]:
    out = []
    for turn in range(4):
        rows = [{"session_id": sid, "role": role, "content": f'[{{"type":"text","text":"{sid} {turn} {role}"}}]',
                 "created_at": 10.0 + turn, "text": f"{sid} {turn} {role}"}
                for sid in ("s1", "s2") for role in ("user", "assistant")]
        rows.append({"session_id": "gone", "role": "user", "content": "[]", "created_at": 1.0, "text": ""})
        used = SessionStore.usage_row(agent_id="a", session_id="s1", provider="p", model="m",
                                      usage_=Usage(input_tokens=turn, output_tokens=2), cost_usd=None if turn else 0.5,
                                      iterations=1, traces=[{"is_error": True}] if turn == 2 else None)
        out.append((rows, {"s1": 2, "s2": 2, "gone": 1}, [used], 100.0 + turn))
    return out


def _setup(conn: Any) -> None:
    metadata.create_all(conn)
    for sid in ("s1", "s2"):
        conn.execute(sessions.insert().values(id=sid, agent_id="a", label=None, message_count=0, created_at=0.0,
                                              updated_at=0.0))


def _dump(conn: Any) -> list[Any]:
    return [conn.execute(sa.select(t).order_by(*t.primary_key.columns)).all() for t in (sessions, messages, usage)]


async def test_the_sqlite_cursor_path_writes_what_the_core_path_writes(tmp_path: Path) -> None:
    sync_engine = sa.create_engine(f"sqlite:///{tmp_path / 'direct.db'}")
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'core.db'}")
    try:
        with sync_engine.begin() as conn:
            assert conn.dialect.driver == "pysqlite"
            _setup(conn)
        async with async_engine.begin() as conn:
            assert conn.dialect.driver == "aiosqlite"
            await conn.run_sync(_setup)
        direct_totals, core_totals = [], []
        for rows, added, used, now in _batches():
            with sync_engine.begin() as conn:
                direct_totals.append(commit_rows(conn, rows, added, used, now, 5))
            async with async_engine.begin() as conn:
                core_totals.append(await conn.run_sync(commit_rows, rows, added, used, now, 5))
        assert direct_totals == core_totals
        assert direct_totals[-1] == {"s1": 5, "s2": 5}  # trimmed to the limit; the unknown session skipped
        with sync_engine.begin() as conn:
            direct = _dump(conn)
        async with async_engine.begin() as conn:
            core = await conn.run_sync(_dump)
        assert direct == core
        assert len(direct[1]) == 5 + 5 + 4  # the kept messages of s1 and s2, and the 4 rows for "gone"
        assert [r.input_tokens for r in direct[2]] == [0, 1, 2, 3] and direct[2][2].tool_errors == 1
    finally:
        sync_engine.dispose()
        await async_engine.dispose()

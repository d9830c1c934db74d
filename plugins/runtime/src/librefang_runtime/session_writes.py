"""The transaction that commits a batch of turns' messages and usage rows (run on a database thread).

It runs for every turn, so on SQLite (pysqlite, the database thread of ``Database.run``) its three
statements go straight to the driver's cursor, inside the same transaction: SQLAlchemy's per-statement
work was about half the transaction's CPU (measured: 0.41 ms against 0.22 ms per commit of two
messages and a usage row). Other databases take the SQLAlchemy Core path.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from librefang_runtime.models import messages, sessions, usage

# Built once: building the expressions was most of the Core path's own time.
_INSERT_MESSAGES = messages.insert()
_INSERT_USAGE = usage.insert()
_ADD_MESSAGES = sessions.update().where(sessions.c.id == sa.bindparam("session_id_")).values(
    message_count=sessions.c.message_count + sa.bindparam("added_", type_=sa.Integer),
    updated_at=sa.bindparam("now_", type_=sa.Float)).returning(sessions.c.message_count)

MESSAGE_COLUMNS = ("session_id", "role", "content", "created_at", "text")
_USAGE_COLUMNS = frozenset(c.name for c in usage.c if c.name != "id")
_SQLITE_INSERT_MESSAGE = (f"INSERT INTO {messages.name} ({', '.join(MESSAGE_COLUMNS)}) "
                          f"VALUES ({', '.join('?' * len(MESSAGE_COLUMNS))})")
_SQLITE_ADD_MESSAGES = (f"UPDATE {sessions.name} SET message_count = message_count + ?, updated_at = ? "
                        "WHERE id = ? RETURNING message_count")


_message_values = itemgetter(*MESSAGE_COLUMNS)  # a row dict -> its values in column order, in C
_usage_inserts: dict[tuple[str, ...], str] = {}  # the usage INSERT per column set (one or two in practice)


def _sqlite_insert_usage(columns: tuple[str, ...]) -> str:
    sql = _usage_inserts.get(columns)
    if sql is None:
        # Keys are checked against the table's columns before they get here (commit_rows).
        sql = f"INSERT INTO {usage.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        if len(_usage_inserts) < 16:
            _usage_inserts[columns] = sql
    return sql


def _trim(conn: Any, session_id: str, total: int, max_messages: int) -> int:
    """Drop the oldest messages beyond ``max_messages`` (rare: Core is fine here)."""
    if total <= max_messages:
        return total
    oldest = sa.select(messages.c.id).where(messages.c.session_id == session_id) \
        .order_by(messages.c.id).limit(total - max_messages).scalar_subquery()
    conn.execute(messages.delete().where(messages.c.id.in_(oldest)))
    conn.execute(sessions.update().where(sessions.c.id == session_id).values(message_count=max_messages))
    return max_messages


def _commit_sqlite(conn: Any, rows: list[dict[str, Any]], added: dict[str, int], usage_rows: list[dict[str, Any]],
                   now: float, max_messages: int) -> dict[str, int]:
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        if rows:
            cursor.executemany(_SQLITE_INSERT_MESSAGE, map(_message_values, rows))
        totals: dict[str, int] = {}
        for session_id, count in added.items():
            cursor.execute(_SQLITE_ADD_MESSAGES, (count, now, session_id))
            found = cursor.fetchone()
            if found is not None:
                totals[session_id] = found[0]
        for row in usage_rows:
            columns = tuple(row)
            cursor.execute(_sqlite_insert_usage(columns), tuple(row.values()))
    finally:
        cursor.close()
    for session_id, total in totals.items():
        totals[session_id] = _trim(conn, session_id, total, max_messages)
    return totals


def commit_rows(conn: Any, rows: list[dict[str, Any]], added: dict[str, int], usage_rows: list[dict[str, Any]],
                now: float, max_messages: int) -> dict[str, int]:
    """Insert messages (dicts of :data:`MESSAGE_COLUMNS`) and usage rows, update the sessions' counts
    (oldest messages go beyond ``max_messages``); returns each existing session's message count after
    the write. ``conn`` is a sync SQLAlchemy connection inside a transaction."""
    if conn.dialect.driver == "pysqlite" and all(_USAGE_COLUMNS.issuperset(r) for r in usage_rows):
        return _commit_sqlite(conn, rows, added, usage_rows, now, max_messages)
    if rows:
        conn.execute(_INSERT_MESSAGES, rows)
    totals: dict[str, int] = {}
    for session_id, count in added.items():
        total = conn.execute(_ADD_MESSAGES, {"session_id_": session_id, "added_": count, "now_": now}) \
            .scalar_one_or_none()
        if total is not None:
            totals[session_id] = _trim(conn, session_id, total, max_messages)
    if usage_rows:
        conn.execute(_INSERT_USAGE, usage_rows)
    return totals

"""The SQLite full-text index follows the commits in a later step (migration 0005, search_index.py):
search still sees every committed message at once, and every write path (turn commit, trim, history
clear, session delete, compaction, a reused id) keeps the external-content index exactly equal to the
messages table, across a restart, a crash between a commit and the index step, and a failed step.

``integrity`` runs FTS5's own check against the content table: it fails when the index holds a row
the table does not, misses one it should hold, or holds other text."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from librefang.storage import Database
from librefang_providers.api import Message
from librefang_runtime.plugin import MIGRATIONS
from librefang_runtime.search_index import SearchIndexer, index_pending
from librefang_runtime.sessions import SessionStore


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database of its own for the test, closed after it."""
    opened = await open_db(tmp_path / "a.db")
    try:
        yield opened
    finally:
        await opened.close()


async def open_db(path: Path, migrations: Path = MIGRATIONS) -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.open()
    db.add_migrations("runtime", migrations)
    await db.migrate()
    return db


def _state(conn: Any) -> tuple[int, int, int]:
    """(mark, newest message id, rows in the index)"""
    mark = conn.execute(sa.text("SELECT indexed_to FROM runtime_search_state")).scalar()
    newest = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM runtime_messages")).scalar()
    indexed = conn.execute(sa.text("SELECT count(*) FROM runtime_messages_fts_docsize")).scalar()
    return mark, newest, indexed


class _Rollback(Exception):
    pass


def _integrity(conn: Any) -> None:
    check = sa.text("INSERT INTO runtime_messages_fts(runtime_messages_fts, rank) VALUES ('integrity-check', :rank)")
    conn.execute(check, {"rank": 0})  # the index's own structure, as it is
    # Then with the pending messages indexed, compared with the content table (rank 1): it fails ("database
    # disk image is malformed") if the index missed a row at or below the mark, kept a deleted one, or was
    # told to delete a row it never held. Rolled back: the test's state stays as it was.
    index_pending(conn)
    conn.execute(check, {"rank": 1})
    raise _Rollback


async def state(db: Database) -> tuple[int, int, int]:
    return await db.run(_state)


async def integrity(db: Database) -> None:
    with pytest.raises(_Rollback):
        await db.run(_integrity)


def store_of(db: Database, **kwargs: Any) -> SessionStore:
    store = SessionStore(db, **kwargs)
    store.indexer.delay = 3600.0  # the timed step never runs unless a test asks for it
    return store


async def turn(store: SessionStore, session_id: str, text: str) -> None:
    await store.ensure(session_id, "agent")
    await store.write(session_id, [Message("user", text), Message("assistant", f"reply about {text}")])


async def found(store: SessionStore, text: str) -> list[str]:
    return sorted(hit["snippet"] for hit in await store.search(text))


async def test_a_turn_commit_leaves_indexing_to_a_later_step_and_search_sees_it_at_once(db: Database) -> None:
    store = store_of(db)
    await turn(store, "s1", "zebra crossing")
    mark, newest, indexed = await state(db)
    assert (mark, newest, indexed) == (0, 2, 0)  # committed, not indexed by the commit
    assert await found(store, "zebra") == ["reply about zebra crossing", "zebra crossing"]
    assert await state(db) == (2, 2, 2)  # search caught up first
    await integrity(db)
    await turn(store, "s1", "zebra again")
    assert len(await found(store, "zebra")) == 4
    await integrity(db)
    await store.aclose()


async def test_the_timed_step_indexes_in_batches_without_a_search(db: Database) -> None:
    store = SessionStore(db)
    store.indexer.delay, store.indexer.batch = 0.01, 3
    for i in range(4):
        await turn(store, "s1", f"word{i} common")
    assert (await state(db))[0] < 8
    for _ in range(200):
        if (await state(db))[0] == 8:
            break
        await asyncio.sleep(0.01)
    assert await state(db) == (8, 8, 8)  # 3 transactions of at most 3 messages
    await integrity(db)
    await turn(store, "s1", "late")  # written while idle: the timer is armed again
    for _ in range(200):
        if (await state(db))[0] == 10:
            break
        await asyncio.sleep(0.01)
    assert await state(db) == (10, 10, 10)
    await store.aclose()
    await turn(store, "s1", "after close")  # no step is armed after close; search still catches up
    assert (await state(db))[0] == 10
    assert await found(store, "close") == ["after close", "reply about after close"]


@pytest.mark.parametrize("indexed_first", [True, False])
async def test_clear_trim_delete_and_compaction_keep_the_index_exact(db: Database, indexed_first: bool) -> None:
    store = store_of(db, max_messages=6)
    for i in range(3):
        await turn(store, "keep", f"apple{i} kept")
        await turn(store, "gone", f"apple{i} deleted")
        await turn(store, "clear", f"apple{i} cleared")
    if indexed_first:
        await store.indexer.catch_up()
    # a mix: the next rows are above the mark whichever way the first ones went
    await turn(store, "keep", "apple3 kept")  # trims the oldest two of "keep" (6 messages kept)
    await turn(store, "clear", "apple3 cleared")
    await integrity(db)
    await store.clear("clear")
    await store.delete(["gone"])
    await integrity(db)
    assert await found(store, "apple1") == ["apple1 kept", "reply about apple1 kept"]
    assert await found(store, "apple0") == []  # trimmed
    # compaction: the summary takes the first removed message's id (at or below the mark here)
    await store.compact_prefix("keep", 2, Message("user", "summary of banana talk"), "banana talk")
    await integrity(db)
    assert await found(store, "banana") == ["summary of banana talk"]
    assert await found(store, "apple1") == []
    mark, newest, indexed = await state(db)
    assert mark == newest and indexed == 5  # summary + the last two turns of "keep"


async def test_a_reused_id_at_or_below_the_mark_is_indexed_by_its_insert(db: Database) -> None:
    store = store_of(db)
    await turn(store, "old", "cherry old")
    await turn(store, "new", "cherry new")
    await store.indexer.catch_up()
    await store.delete(["new"])  # the newest ids go: SQLite hands them out again
    await turn(store, "again", "cherry again")
    mark, newest, indexed = await state(db)
    assert (mark, newest, indexed) == (4, 4, 4)  # ids 3 and 4 again, indexed as they were inserted
    await integrity(db)
    assert await found(store, "cherry") == ["cherry again", "cherry old", "reply about cherry again",
                                            "reply about cherry old"]


async def test_a_failed_index_step_changes_nothing_and_the_next_one_catches_up(db: Database) -> None:
    store = store_of(db)
    await turn(store, "s1", "grape")

    def index_then_fail(conn: Any) -> None:
        index_pending(conn)
        raise RuntimeError("crash inside the index step")

    with pytest.raises(RuntimeError):
        await db.run(index_then_fail)
    assert await state(db) == (0, 2, 0)  # rolled back together: the mark and the index
    await integrity(db)
    assert await found(store, "grape") == ["grape", "reply about grape"]
    await integrity(db)


async def test_pending_messages_survive_a_restart_and_a_crash_after_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    db = await open_db(path)
    store = store_of(db)
    await turn(store, "s1", "mango first")
    await store.aclose()
    await db.close()  # shut down with the messages not indexed yet
    # another process commits a turn and dies before any index step (the timer was armed)
    script = textwrap.dedent(f"""
        import asyncio, os
        from librefang.storage import Database
        from librefang_providers.api import Message
        from librefang_runtime.plugin import MIGRATIONS
        from librefang_runtime.sessions import SessionStore
        async def main():
            db = Database("sqlite+aiosqlite:///{path}")
            await db.open(); db.add_migrations("runtime", MIGRATIONS); await db.migrate()
            store = SessionStore(db)
            await store.write("s1", [Message("user", "mango second")])
            assert store.indexer._timer is not None
            os._exit(0)
        asyncio.run(main())
    """)
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE,
                                                env=dict(os.environ))
    _, stderr = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, stderr.decode()
    db = await open_db(path)
    try:
        assert await state(db) == (0, 3, 0)
        store = store_of(db)
        assert await found(store, "mango") == ["mango first", "mango second", "reply about mango first"]
        assert await state(db) == (3, 3, 3)
        await integrity(db)
    finally:
        await db.close()


async def test_upgrade_from_the_indexing_trigger_keeps_what_it_indexed(tmp_path: Path) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for script in sorted(MIGRATIONS.glob("000[1-4]_*.py")):
        shutil.copy(script, before / script.name)
    path = tmp_path / "a.db"
    db = await open_db(path, before)
    try:
        await db.run(lambda conn: conn.execute(sa.text(
            "INSERT INTO runtime_sessions (id, agent_id, message_count, created_at, updated_at) "
            "VALUES ('s1', 'agent', 0, 0, 0)")))
        store = store_of(db)  # the write never touches the state table: works before 0005 too
        await store.write("s1", [Message("user", "kiwi before")])
        await store.aclose()
        await db.close()
        db = await open_db(path)
        assert await state(db) == (1, 1, 1)  # indexed by the old trigger, counted as indexed
        store = store_of(db)
        await store.write("s1", [Message("user", "kiwi after")])
        assert await state(db) == (1, 2, 1)
        assert await found(store, "kiwi") == ["kiwi after", "kiwi before"]
        await integrity(db)
    finally:
        await db.close()


async def test_a_lost_state_row_rebuilds_the_index(db: Database) -> None:
    store = store_of(db)
    await turn(store, "s1", "plum")
    await db.run(lambda conn: conn.execute(sa.text("DELETE FROM runtime_search_state")))
    assert await found(store, "plum") == ["plum", "reply about plum"]
    assert await state(db) == (2, 2, 2)
    await integrity(db)


async def test_nothing_to_do_on_other_databases() -> None:
    class Other:
        is_sqlite = False

        async def run(self, *args: Any) -> None:
            raise AssertionError("no index step without SQLite")

    indexer = SearchIndexer(Other())
    indexer.written(5)
    await indexer.catch_up()
    await indexer.aclose()
    assert indexer._timer is None

"""Storage: SQLite in WAL mode under data/, per-plugin Alembic histories applied at start,
and an upgrade from an older schema that keeps the rows."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import textwrap
import threading
from pathlib import Path

import librefang
import librefang.storage as storage
import pytest
from librefang.storage import Database
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

REV1 = '''
"""notes table

Revision ID: notes_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "notes_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "notes_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )


def downgrade():
    op.drop_table("notes_items")
'''

REV2 = '''
"""add a title column filled from the body, and a tags table

Revision ID: notes_0002
"""
import sqlalchemy as sa
from alembic import op

revision = "notes_0002"
down_revision = "notes_0001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("notes_items", sa.Column("title", sa.String(40), nullable=False, server_default=""))
    op.execute("UPDATE notes_items SET title = substr(body, 1, 10)")
    op.create_table(
        "notes_tags",
        sa.Column("note_id", sa.Integer, sa.ForeignKey("notes_items.id"), primary_key=True),
        sa.Column("tag", sa.String(50), primary_key=True),
    )


def downgrade():
    op.drop_table("notes_tags")
    op.drop_column("notes_items", "title")
'''


def write_revision(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source))


class NotesPlugin:
    """A test plugin that owns the ``notes`` schema history in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @librefang.hookimpl
    def register_migrations(self, register):
        register("notes", self.folder)


async def test_sqlite_file_in_data_dir_with_wal(make_kernel, librefang_home):
    kernel = await make_kernel(load_entry_points=False)
    assert kernel.db.url == f"sqlite+aiosqlite:///{librefang_home / 'data' / 'librefang.db'}"
    async with kernel.db.begin() as conn:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        sync = (await conn.execute(text("PRAGMA synchronous"))).scalar()
        fk = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
    assert mode == "wal" and sync == 1 and fk == 1
    assert (librefang_home / "data" / "librefang.db").exists()
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(librefang_home / "data" / "librefang.db") as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert await kernel.db.ping()


async def test_core_migrations_applied_with_own_version_table(make_kernel, librefang_home):
    kernel = await make_kernel(load_entry_points=False)
    async with kernel.db.begin() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version_core"))).scalar()
        tables = {r[0] for r in await conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
    assert version == "core_0001"
    assert {"core_audit_entries", "core_idempotency"} <= tables


async def test_database_upgrade_keeps_rows(tmp_path):
    folder = tmp_path / "notes_versions"
    write_revision(folder, "0001_notes.py", REV1)
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    old = Database(url)
    old.add_migrations("notes", folder)
    await old.open()
    assert await old.migrate() == ["notes"]
    async with old.begin() as conn:
        for i in range(1, 51):
            await conn.execute(text("INSERT INTO notes_items (id, body) VALUES (:i, :b)"), {"i": i, "b": f"note body {i:03d}"})
    assert await old.migrate() == []  # unchanged history: nothing to do
    await old.close()

    write_revision(folder, "0002_title_and_tags.py", REV2)
    new = Database(url)
    new.add_migrations("notes", folder)
    await new.open()
    assert await new.migrate() == ["notes"]
    async with new.begin() as conn:
        rows = (await conn.execute(text("SELECT id, body, title FROM notes_items ORDER BY id"))).all()
        version = (await conn.execute(text("SELECT version_num FROM alembic_version_notes"))).scalar()
        await conn.execute(text("INSERT INTO notes_tags (note_id, tag) VALUES (1, 'x')"))
    assert version == "notes_0002"
    assert len(rows) == 50
    assert rows[0] == (1, "note body 001", "note body ")
    assert rows[-1] == (50, "note body 050", "note body ")
    await new.close()


async def test_plugin_migrations_applied_at_start_and_upgraded_on_next_start(make_kernel, tmp_path):
    folder = tmp_path / "notes_versions"
    write_revision(folder, "0001_notes.py", REV1)
    plugin = NotesPlugin(folder)
    kernel = await make_kernel(plugins={"notes": plugin}, load_entry_points=False)
    async with kernel.db.begin() as conn:
        await conn.execute(text("INSERT INTO notes_items (id, body) VALUES (7, 'kept across upgrades')"))
    await kernel.stop()

    write_revision(folder, "0002_title_and_tags.py", REV2)
    kernel = await make_kernel(plugins={"notes": plugin}, load_entry_points=False)
    async with kernel.db.begin() as conn:
        row = (await conn.execute(text("SELECT id, body, title FROM notes_items"))).one()
        core = (await conn.execute(text("SELECT version_num FROM alembic_version_core"))).scalar()
    assert tuple(row) == (7, "kept across upgrades", "kept acros")
    assert core == "core_0001"  # another plugin's history is untouched


async def test_plugin_may_only_register_its_own_history(make_kernel, tmp_path):
    folder = tmp_path / "v"
    write_revision(folder, "0001_notes.py", REV1)

    class Squatter:
        @librefang.hookimpl
        def register_migrations(self, register):
            register("core", folder)

    kernel = await make_kernel(plugins={"squatter": Squatter()}, load_entry_points=False)
    assert "may only register migrations" in kernel.plugins.records["squatter"].error


async def exercise_run(db: Database) -> None:
    """Database.run: commits on return, rolls back on raise, returns fn's value, and its writes are
    seen by the async path (and the other way round)."""
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE run_items (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))

    def add(conn, item_id: int, body: str) -> int:
        conn.execute(text("INSERT INTO run_items (id, body) VALUES (:i, :b)"), {"i": item_id, "b": body})
        return int(conn.execute(text("SELECT COUNT(*) FROM run_items")).scalar_one())

    assert await db.run(add, 1, "one") == 1
    assert await db.run(add, item_id=2, body="two") == 2

    def add_then_fail(conn) -> None:
        add(conn, 3, "three")
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await db.run(add_then_fail)
    with pytest.raises(IntegrityError):  # a duplicate key fails the whole transaction
        await db.run(lambda conn: (add(conn, 4, "four"), add(conn, 1, "again")))
    # Many at once: every one commits, none is lost.
    counts = await asyncio.gather(*(db.run(add, i, f"n{i}") for i in range(10, 60)))
    assert all(3 <= n <= 52 for n in counts)  # each sees its own row (and whatever others committed)
    async with db.begin() as conn:
        ids = [r[0] for r in await conn.execute(text("SELECT id FROM run_items ORDER BY id"))]
        await conn.execute(text("INSERT INTO run_items (id, body) VALUES (100, 'async')"))
    assert ids == [1, 2, *range(10, 60)]
    assert await db.run(lambda conn: conn.execute(text("SELECT body FROM run_items WHERE id = 100")).scalar()) == "async"


async def test_run_is_one_transaction_on_a_sqlite_file(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'run.db'}")
    await db.open()
    await exercise_run(db)
    # The worker's connections get the same pragmas as the async ones.
    assert await db.run(lambda conn: conn.execute(text("PRAGMA foreign_keys")).scalar()) == 1
    assert await db.run(lambda conn: conn.execute(text("PRAGMA journal_mode")).scalar()) == "wal"
    await db.close()
    # Committed means on disk: a plain connection sees every row after close.
    with sqlite3.connect(tmp_path / "run.db") as plain:
        assert plain.execute("SELECT COUNT(*) FROM run_items").fetchone()[0] == 53


async def test_run_on_a_sqlite_file_one_writer_thread_cancellation_and_close(tmp_path):
    """One thread runs every transaction in order; a cancelled caller's transaction still commits;
    a transaction that broke its connection leaves the next one a working connection; close()
    finishes whatever was handed over."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}")
    await db.open()
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE w (id INTEGER PRIMARY KEY)"))

    def add(conn, item_id: int) -> int:
        conn.execute(text("INSERT INTO w (id) VALUES (:i)"), {"i": item_id})
        return threading.get_ident()

    # 32 at once: each caller gets its own result (values delivered in batches reach the right future)
    assert await asyncio.gather(*(db.run(lambda conn, i=i: i * 10) for i in range(32))) == [i * 10 for i in range(32)]
    threads = set(await asyncio.gather(*(db.run(add, i) for i in range(1, 41))))
    assert len(threads) == 1 and threading.get_ident() not in threads

    # a caller cancelled while its transaction waits behind a slow one: the transaction still commits
    release = threading.Event()
    slow = asyncio.ensure_future(db.run(lambda conn: release.wait(5)))
    queued = asyncio.ensure_future(db.run(add, 100))
    await asyncio.sleep(0.05)
    queued.cancel()
    release.set()
    assert await slow is True
    with pytest.raises(asyncio.CancelledError):
        await queued
    count = lambda conn: conn.execute(text("SELECT COUNT(*) FROM w WHERE id = 100")).scalar()  # noqa: E731
    assert await db.run(count) == 1

    # a transaction that invalidates its connection and raises: rolled back, the next one works
    def break_connection(conn) -> None:
        add(conn, 200)
        conn.invalidate()
        raise RuntimeError("connection lost")

    with pytest.raises(Exception, match="connection lost|invalidated|Can't reconnect"):
        await db.run(break_connection)
    await db.run(add, 201)
    ids = await db.run(lambda conn: [r[0] for r in conn.execute(text("SELECT id FROM w WHERE id >= 200"))])
    assert ids == [201]

    # handed over, then close(): every queued transaction is committed before close returns
    pending = [asyncio.ensure_future(db.run(add, 300 + i)) for i in range(20)]
    await asyncio.sleep(0)  # they are queued
    await db.close()
    assert len(await asyncio.gather(*pending)) == 20
    with sqlite3.connect(tmp_path / "writer.db") as plain:
        assert plain.execute("SELECT COUNT(*) FROM w WHERE id >= 300").fetchone()[0] == 20


async def test_run_on_a_sqlite_file_commits_and_rolls_back_driver_writes_and_failed_commits(tmp_path):
    """The writer thread begins no SQLAlchemy Transaction of its own: writes sent straight to the
    driver's cursor, through SQLAlchemy, or both, commit together on return and roll back together on
    raise; a COMMIT that fails (a deferred foreign key) rolls back and the next transaction works on the
    same connection; a read leaves no transaction open."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'raw.db'}")
    await db.open()
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        await conn.execute(text("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER "
                                "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"))

    def raw(conn, sql: str) -> None:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    def driver_only(conn, item: int, fail: bool = False) -> int:
        raw(conn, f"INSERT INTO parent (id) VALUES ({item})")
        if fail:
            raise RuntimeError("refused")
        return threading.get_ident()

    def both(conn, item: int, fail: bool = False) -> None:
        conn.execute(text("INSERT INTO parent (id) VALUES (:i)"), {"i": item})
        raw(conn, f"INSERT INTO parent (id) VALUES ({item + 1})")
        if fail:
            raise RuntimeError("refused")

    def orphan(conn, through_sqlalchemy: bool) -> None:  # fails only at COMMIT (deferred foreign key)
        raw(conn, "INSERT INTO parent (id) VALUES (50)")
        if through_sqlalchemy:
            conn.execute(text("INSERT INTO child (id, parent) VALUES (1, 999)"))
        else:
            raw(conn, "INSERT INTO child (id, parent) VALUES (1, 999)")

    def ids(conn) -> list[int]:
        return [r[0] for r in conn.execute(text("SELECT id FROM parent ORDER BY id"))]

    thread = await db.run(driver_only, 1)
    with pytest.raises(RuntimeError, match="refused"):
        await db.run(driver_only, 2, fail=True)
    await db.run(both, 10)
    with pytest.raises(RuntimeError, match="refused"):
        await db.run(both, 20, fail=True)
    for through_sqlalchemy in (False, True):
        with pytest.raises(Exception, match="FOREIGN KEY"):
            await db.run(orphan, through_sqlalchemy)
    assert await db.run(driver_only, 3) == thread
    assert await db.run(ids) == [1, 3, 10, 11]
    assert await db.run(lambda conn: conn.connection.dbapi_connection.in_transaction) is False
    await db.close()
    with sqlite3.connect(tmp_path / "raw.db") as plain:
        assert [r[0] for r in plain.execute("SELECT id FROM parent ORDER BY id")] == [1, 3, 10, 11]
        assert plain.execute("SELECT COUNT(*) FROM child").fetchone()[0] == 0


def _eventfds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]":
                found.add(int(name))
        except OSError:  # closed meanwhile
            pass
    return found


@pytest.mark.skipif(not hasattr(os, "eventfd") or not Path("/proc/self/fd").is_dir(), reason="Linux eventfd")
async def test_run_results_reach_each_loop_through_its_eventfd_and_close_releases_them(tmp_path):
    """Results are handed back through an eventfd per event loop: two loops (threads) share the writer
    and each gets its own results; a loop that closed without detaching falls back cleanly; results in
    flight while the loop detaches still arrive; close() leaves no descriptor behind."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'fd.db'}")
    await db.open()
    writer = db._writer
    assert await db.run(lambda conn: 1) == 1
    loop = asyncio.get_running_loop()
    assert loop in writer.wakers

    def other_loop() -> list[int]:
        async def many() -> list[int]:
            return list(await asyncio.gather(*(db.run(lambda conn, i=i: i) for i in range(50))))
        return asyncio.run(many())  # this loop closes without detaching

    here, there = await asyncio.gather(asyncio.gather(*(db.run(lambda conn, i=i: -i) for i in range(50))),
                                       asyncio.to_thread(other_loop))
    assert list(here) == [-i for i in range(50)] and there == list(range(50))
    assert len(writer.wakers) == 2
    ours = set(writer.wakers.values())
    assert ours <= _eventfds()

    # results posted while the loop detaches (reader removed mid-flight) still arrive
    release = threading.Event()
    slow = asyncio.ensure_future(db.run(lambda conn: release.wait(5)))
    queued = [asyncio.ensure_future(db.run(lambda conn, i=i: i)) for i in range(30)]
    await asyncio.sleep(0.02)
    release.set()
    writer.detach(loop)
    assert await asyncio.wait_for(asyncio.gather(slow, *queued), 5) == [True, *range(30)]
    assert loop not in writer.wakers
    assert await db.run(lambda conn: 7) == 7  # attached again
    # the race itself, step by step: a result posted (eventfd written), then the reader removed
    # before the loop got to it: detach delivers it
    posted = loop.create_future()
    writer._post(loop, posted, "late", None)
    writer.detach(loop)
    assert await asyncio.wait_for(posted, 2) == "late"
    assert await db.run(lambda conn: 8) == 8
    ours |= set(writer.wakers.values())
    await db.close()
    assert writer.wakers == {}
    assert not ours & _eventfds()  # every descriptor it made is closed


def _checkpointed_rows(path: Path, tmp_path: Path) -> int:
    """Rows of ``w`` in the database file itself (what a checkpoint copied back from the WAL)."""
    copy = tmp_path / f"copy-{len(list(tmp_path.glob('copy-*')))}.db"
    shutil.copy(path, copy)  # the main file alone: without its WAL, only checkpointed pages
    with sqlite3.connect(copy) as plain:
        try:
            return plain.execute("SELECT COUNT(*) FROM w").fetchone()[0]
        except sqlite3.OperationalError:  # the table itself is still only in the WAL
            return 0
        except sqlite3.DatabaseError:  # copied while a checkpoint was writing: not a count
            return -1


async def _ckpt_db(path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.open()
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE w (id INTEGER PRIMARY KEY)"))
    return db


def _add(conn, item_id: int) -> None:
    conn.execute(text("INSERT INTO w (id) VALUES (:i)"), {"i": item_id})


async def test_writer_checkpoints_once_idle_after_delivering_results(tmp_path, monkeypatch):
    """The writer's connection does not checkpoint inside a commit (its automatic threshold is only a
    bound): after CHECKPOINT_EVERY transactions, once their results are out and nothing is queued."""
    monkeypatch.setattr(storage, "CHECKPOINT_EVERY", 6)
    path = tmp_path / "idle.db"
    db = await _ckpt_db(path)
    autocheckpoint = await db.run(lambda conn: conn.execute(text("PRAGMA wal_autocheckpoint")).scalar())  # 1
    assert autocheckpoint == storage.WRITER_AUTOCHECKPOINT
    for i in range(4):  # 2..5
        await db.run(_add, i)
    await asyncio.sleep(0.1)
    assert _checkpointed_rows(path, tmp_path) == 0  # fewer than CHECKPOINT_EVERY: none
    await db.run(_add, 4)  # 6: delivered first, then checkpointed (nothing else is queued)
    for _ in range(100):
        if _checkpointed_rows(path, tmp_path) == 5:
            break
        await asyncio.sleep(0.05)
    assert _checkpointed_rows(path, tmp_path) == 5
    await db.close()


async def test_writer_checkpoints_a_queue_that_never_empties(tmp_path, monkeypatch):
    """A slow transaction while eleven more queue behind it: the eighth (CHECKPOINT_FORCED) is followed
    by a checkpoint although the queue is not empty; the last four are fewer than CHECKPOINT_EVERY, so
    nothing else is checkpointed (without the forced one: nothing, or all eleven once idle)."""
    monkeypatch.setattr(storage, "CHECKPOINT_EVERY", 6)
    monkeypatch.setattr(storage, "CHECKPOINT_FORCED", 8)
    path = tmp_path / "busy.db"
    db = await _ckpt_db(path)
    release = threading.Event()
    slow = asyncio.ensure_future(db.run(lambda conn: release.wait(5)))  # 1
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(db.run(_add, i)) for i in range(11)]  # 2..8 (checkpoint), then 1..4
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(slow, *queued)
    await asyncio.sleep(0.1)
    assert _checkpointed_rows(path, tmp_path) == 7
    await db.close()


async def test_run_on_in_memory_sqlite_uses_the_async_engine():
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.open()
    await exercise_run(db)
    await db.close()


async def test_pooled_connection_left_in_a_transaction_is_rolled_back(tmp_path):
    """Committed connections skip the pool's rollback; one returned mid-transaction still gets it."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'reset.db'}")
    await db.open()
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    def write_behind_sqlalchemys_back(sync_conn) -> None:
        dbapi = sync_conn.connection.dbapi_connection  # no SQLAlchemy transaction around this write
        cursor = dbapi.cursor()
        cursor.execute("INSERT INTO t (id) VALUES (1)")
        cursor.close()
        assert dbapi.driver_connection.in_transaction

    async with db.engine.connect() as conn:  # back to the pool mid-transaction: the reset rolls back
        await conn.run_sync(write_behind_sqlalchemys_back)
    async with db.begin() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM t"))).scalar() == 0
        await conn.execute(text("INSERT INTO t (id) VALUES (2)"))
    assert await db.run(lambda conn: conn.execute(text("SELECT COUNT(*) FROM t")).scalar()) == 1
    await db.close()


async def test_missing_migrations_folder_is_refused(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="does not exist"):
        db.add_migrations("notes", tmp_path / "nowhere")


async def test_postgres_from_vault_reference_upgrade_keeps_rows(make_kernel, librefang_home, tmp_path, postgres_url):
    from librefang.vault import Vault

    Vault(librefang_home).set("PG_URL", postgres_url)
    folder = tmp_path / "notes_versions"
    write_revision(folder, "0001_notes.py", REV1)
    plugin = NotesPlugin(folder)
    config = 'database_url = "vault:PG_URL"\n'
    kernel = await make_kernel(plugins={"notes": plugin}, load_entry_points=False, config=config)
    assert kernel.db.url.startswith("postgresql+asyncpg://") and not kernel.db.is_sqlite
    async with kernel.db.begin() as conn:
        await conn.execute(text("INSERT INTO notes_items (id, body) VALUES (3, 'kept in postgres')"))
    await kernel.stop()
    write_revision(folder, "0002_title_and_tags.py", REV2)
    kernel = await make_kernel(plugins={"notes": plugin}, load_entry_points=False, config=config)
    async with kernel.db.begin() as conn:
        row = (await conn.execute(text("SELECT id, body, title FROM notes_items"))).one()
    assert tuple(row) == (3, "kept in postgres", "kept in po")
    assert (await kernel.audit.verify()).valid
    await kernel.stop()


async def test_run_on_postgres(postgres_url):
    db = Database(postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    await db.open()
    await exercise_run(db)
    await db.close()

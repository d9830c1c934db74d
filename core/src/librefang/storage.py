"""Storage: one SQLAlchemy async engine per kernel, SQLite (WAL) by default, PostgreSQL by URL.

Each plugin owns its tables and their schema history: Alembic revision scripts in a folder it
registers through ``register_migrations``, with a version table of its own. Migrations are applied
at start; a fingerprint of each folder is kept so an unchanged schema costs no Alembic import.

Two ways to run SQL:

- :meth:`Database.begin` / :meth:`Database.session`: async SQLAlchemy; with SQLite (aiosqlite) every
  statement, the commit and the connection's reset are each a hop to the connection's worker
  thread and back.
- :meth:`Database.run`: a plain function run against a sync SQLAlchemy connection inside one
  transaction. With a SQLite file the whole transaction is ONE hop to a database worker thread
  (one writer thread keeping one pysqlite connection on the same file); with PostgreSQL (asyncpg) it is
  ``AsyncConnection.run_sync``. Meant for short, hot transactions (a few statements, no awaiting).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger("librefang.storage")

_STATE_TABLE = "librefang_schema_state"
# Pysqlite connections serving Database.run on SQLite (the _Writer thread keeps one: one writer
# thread, never more). SQLite has one writer at a
# time: a second thread's write would wait on the file lock in SQLite's busy handler, which sleeps
# 1, 2, 5, 10… ms between tries; one thread queues our transactions without sleeping (measured:
# 2,000 concurrent one-row transactions took 1.7 s with 3 threads, 1.1 s with 1).
RUN_THREADS = 1
# The writer thread's connection does not checkpoint the WAL inside a commit (SQLite's automatic
# checkpoint runs in the commit that crosses its threshold, so that caller waited for the copy back and
# the fsyncs: measured here, a turn's commit every 4 ms, p99 of the round trip about 18 ms -> 6 ms).
# It checkpoints after every CHECKPOINT_EVERY transactions once it has delivered their results and
# nothing is queued (the same PASSIVE checkpoint, off every caller's path), or after
# CHECKPOINT_FORCED of them if it is never idle; the automatic checkpoint stays as a bound on the
# WAL's size at WRITER_AUTOCHECKPOINT pages.
CHECKPOINT_EVERY = 128
CHECKPOINT_FORCED = 1024
WRITER_AUTOCHECKPOINT = 10000

_EVENTFD = hasattr(os, "eventfd")  # Linux; elsewhere results come through call_soon_threadsafe

P = ParamSpec("P")
T = TypeVar("T")


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _writer_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")


def _sqlite_reset(dbapi_connection: Any, _record: Any, state: Any) -> None:
    """Pool reset for aiosqlite connections: roll back only a connection still in a transaction.

    The default reset (a rollback on every return to the pool) is one more hop to the connection's
    thread per transaction; after a commit there is nothing to roll back. ``in_transaction`` is a
    plain attribute read of the sqlite3 connection (no hop).
    """
    if state.transaction_was_reset or not state.asyncio_safe:
        return  # already rolled back by SQLAlchemy; or not in an async context (only terminate is possible)
    try:
        busy = bool(dbapi_connection.driver_connection.in_transaction)
    except Exception:  # closed, or not the driver we expect: reset the safe way
        busy = True
    if busy:
        dbapi_connection.rollback()


class _Writer:
    """The thread running :meth:`Database.run` transactions on a SQLite file, one after another.

    Cheaper per transaction than ``loop.run_in_executor`` on a one-thread pool (measured in the
    commit that introduced it): the caller puts its work on a queue and awaits a plain asyncio
    future; the thread drains the queue, runs each transaction on the one connection it keeps open
    (no pool checkout, reset and return per transaction), and hands results back in batches: a
    result finished while the loop has not yet picked up the previous ones rides on the same
    wake-up instead of waking the loop again.

    The wake-up is a write to an eventfd of the loop's (watched by ``add_reader``), which releases
    the GIL for the syscall: the woken loop finds the GIL free. uvloop's ``call_soon_threadsafe``
    writes its eventfd holding the GIL, so the loop woke only to wait for it while this thread went
    back to its queue (measured: 5.4-6.0 -> 2.3-2.4 context switches per transaction, /tmp/dbw/hop2.py).
    Only this thread writes to or closes those descriptors, so a number is never reused under it.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lock = threading.Lock()
        # Finished transactions per event loop, waiting for that loop's one scheduled delivery.
        self.outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        self.conn: Connection | None = None
        self.dbapi: Any = None  # the pysqlite connection under conn
        self.unchecked = 0  # transactions since the last checkpoint
        # Per event loop that submitted work: the eventfd its reader waits on (guarded by ``lock``).
        self.wakers: dict[asyncio.AbstractEventLoop, int] = {}
        # A daemon thread: a database nobody closed must not keep the process alive at exit
        # (close() drains the queue and joins it; an unclosed one only loses work nobody awaits).
        self.thread = threading.Thread(target=self._work, name="librefang-db", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., T], args: Any, kwargs: Any) -> asyncio.Future[T]:
        """Queue ``fn(conn, *args, **kwargs)``; the future resolves on the calling loop.

        Once queued it runs (commits or rolls back) even if the caller is cancelled."""
        loop = asyncio.get_running_loop()
        if loop not in self.wakers and _EVENTFD:
            self._attach(loop)
        future: asyncio.Future[T] = loop.create_future()
        self.queue.put((loop, future, fn, args, kwargs))
        return future

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            loop.add_reader(fd, self._wake, loop, fd)
        except Exception:  # a loop without add_reader: results come through call_soon_threadsafe
            os.close(fd)
            return
        with self.lock:
            self.wakers[loop] = fd

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop waking ``loop`` through its eventfd (call on that loop); results still on their way
        to it come through ``call_soon_threadsafe``. The thread closes the descriptor."""
        with self.lock:
            fd = self.wakers.pop(loop, None)
        if fd is not None:
            if not loop.is_closed():
                loop.remove_reader(fd)
                # a result posted just before the pop may have written to the fd nobody reads now
                loop.call_soon(self._deliver, loop)
            self.queue.put(fd)

    def stop(self) -> None:
        """Let the queued transactions finish, then end the thread (blocking: call off the loop)."""
        self.queue.put(None)
        self.thread.join()
        with self.lock:  # loops that never detached: close only what no running loop still watches
            for loop, fd in list(self.wakers.items()):
                if loop.is_closed():
                    del self.wakers[loop]
                    os.close(fd)

    def _work(self) -> None:
        get = self.queue.get
        while True:
            item = get()
            if item is None:
                break
            if type(item) is int:  # a detached loop's eventfd
                os.close(item)
                continue
            loop, future, fn, args, kwargs = item
            try:
                result, error = self._transaction(fn, args, kwargs), None
            except BaseException as exc:  # as a thread pool does: every failure goes to the caller
                result, error = None, exc
            self._post(loop, future, result, error)
            del item, loop, future, fn, args, kwargs, result, error  # no references kept while idle
            self.unchecked += 1
            if self.unchecked >= CHECKPOINT_EVERY and (self.queue.empty() or self.unchecked >= CHECKPOINT_FORCED):
                self._checkpoint()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database file (PASSIVE: never waits for readers or writers)."""
        self.unchecked = 0
        if self.conn is None or self.dbapi is None:
            return
        try:
            self.dbapi.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        except Exception:  # the automatic checkpoint (and the next try) still bound the WAL
            log.warning("checkpointing the database's WAL failed", exc_info=True)

    def _transaction(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        conn = self.conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self.conn = self.engine.connect()
            self.dbapi = conn.connection.dbapi_connection
        # No SQLAlchemy Transaction around fn: pysqlite opens the database transaction itself before the
        # first write whether or not SQLAlchemy began one (its do_begin is a no-op), so the transaction
        # is the same; what is saved is the Transaction object's begin/commit bookkeeping (about a tenth
        # of a turn's commit in Python). A statement fn runs through SQLAlchemy autobegins its
        # Transaction: that one is committed (or rolled back) through SQLAlchemy, as before. Writes fn
        # sends straight to the driver's cursor are committed (or rolled back) on the driver connection.
        dbapi = self.dbapi
        try:
            result = fn(conn, *args, **kwargs)
            if conn.in_transaction():
                conn.commit()
            else:
                dbapi.commit()  # a no-op when nothing was written
            return result
        except BaseException:
            try:
                transaction = conn.get_transaction()  # also one a failed commit left inactive
                if transaction is not None:
                    transaction.rollback()
                dbapi.rollback()
                clean = not (conn.invalidated or dbapi.in_transaction or conn.get_transaction() is not None)
            except Exception:
                clean = False
            if not clean:  # not cleanly rolled back: a fresh connection next time
                self.conn = None
                try:
                    conn.close()
                except Exception:
                    log.warning("closing a failed database connection raised", exc_info=True)
            raise

    def _post(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
              error: BaseException | None) -> None:
        with self.lock:
            waiting = self.outbox.get(loop)
            if waiting is not None:  # a delivery is already scheduled on that loop: join it
                waiting.append((future, result, error))
                return
            self.outbox[loop] = [(future, result, error)]
            fd = self.wakers.get(loop)
        if fd is not None and not loop.is_closed():
            os.eventfd_write(fd, 1)  # the GIL is released for the write (see the class docstring)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, loop)
        except RuntimeError:  # the loop is closed: nobody can await these any more
            with self.lock:
                self.outbox.pop(loop, None)

    def _wake(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        try:
            os.eventfd_read(fd)  # reset the counter: one delivery for every write so far
        except BlockingIOError:
            pass
        self._deliver(loop)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:
            done = self.outbox.pop(loop, ())
        for future, result, error in done:
            if future.cancelled():  # the caller went away; its transaction still ran
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


def _run_alembic_upgrade(sync_conn: Any, name: str, folder: str) -> None:
    """Upgrade one plugin's schema to its head revision (runs in the engine's sync context)."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    # Alembic announces every internal plugin it sets up at INFO; only the upgrades matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

    script = ScriptDirectory(folder, version_locations=[folder])

    def upgrade(rev: Any, _context: Any) -> Any:
        return script._upgrade_revs("heads", rev)

    context = MigrationContext.configure(
        sync_conn,
        opts={"version_table": f"alembic_version_{name}", "fn": upgrade, "script": script},
    )
    with Operations.context(context):
        context.run_migrations()


class Database:
    """The kernel's database: engine, sessions, and per-plugin migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self.migrations: dict[str, Path] = {}
        self._health: tuple[float, bool] = (float("-inf"), False)  # (monotonic time, result) of the last ping
        self._health_task: asyncio.Task[bool] | None = None
        # Database.run on a SQLite file: a sync engine on the same file and the thread it runs in.
        self._sync_engine: Engine | None = None
        self._writer: _Writer | None = None
        # In-memory SQLite shares one connection: run() calls must not interleave on it.
        self._run_lock = asyncio.Lock() if self.is_sqlite else None

    async def open(self) -> None:
        """Create the engine (and the SQLite file's folder)."""
        kwargs: dict[str, Any] = {}
        file_path = None
        if self.is_sqlite:
            path = self.url.split("///", 1)[-1].split("?", 1)[0]
            if path and path != ":memory:" and not path.startswith("file:"):
                file_path = Path(path)
                file_path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            kwargs["pool_reset_on_return"] = None  # _sqlite_reset rolls back only what needs it
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine.pool, "reset", _sqlite_reset)
        if file_path is not None:
            # pysqlite on the same file: a whole transaction runs in one of our threads. (An
            # in-memory database exists once per connection, so it keeps the async path.)
            sync_url = make_url(self.url).set(drivername="sqlite")
            self._sync_engine = create_engine(
                sync_url, connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=RUN_THREADS, max_overflow=0,
            )
            event.listen(self._sync_engine, "connect", _sqlite_pragmas)
            event.listen(self._sync_engine, "connect", _writer_pragmas)
            self._writer = _Writer(self._sync_engine)
        self._sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        self._health = (float("-inf"), False)
        if self._writer is not None:
            # Transactions already handed to the thread finish (they may be acknowledged writes).
            writer, self._writer = self._writer, None
            loop = asyncio.get_running_loop()
            writer.detach(loop)
            await loop.run_in_executor(None, writer.stop)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    def session(self) -> AsyncSession:
        """A new ORM session (use as ``async with kernel.db.session() as s``)."""
        assert self._sessionmaker is not None, "database is not open"
        return self._sessionmaker()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction that commits on success."""
        assert self.engine is not None, "database is not open"
        async with self.engine.begin() as conn:
            yield conn

    async def run(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction and return its result.

        ``fn`` is a plain (not async) function given a sync SQLAlchemy :class:`~sqlalchemy.Connection`;
        the transaction commits when it returns and rolls back when it raises (the exception is
        re-raised here). When this returns, the transaction is committed: safe to acknowledge.

        With a SQLite file the whole transaction is one hop to a database worker thread, instead of
        one hop per statement, commit and reset with :meth:`begin` (aiosqlite): use it for short,
        hot transactions. ``fn`` must therefore be thread-safe and quick: no event-loop calls, no
        waiting on anything but the database, no shared state without its own lock. With PostgreSQL
        (or an in-memory SQLite database) it runs through ``AsyncConnection.run_sync`` on the async
        engine, with the same semantics. Cancelling the caller does not stop a transaction already
        handed to the thread (on SQLite: every call that got here): it still commits or rolls back.
        """
        writer = self._writer
        if writer is not None:
            return await writer.submit(fn, args, kwargs)
        assert self.engine is not None, "database is not open"
        if self._run_lock is not None:
            async with self._run_lock, self.engine.begin() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args, **kwargs)

    def add_migrations(self, name: str, folder: str | Path) -> None:
        """Register a plugin's Alembic versions folder (called through ``register_migrations``)."""
        path = Path(folder)
        if not path.is_dir():
            raise ValueError(f"migrations folder for {name!r} does not exist: {path}")
        self.migrations[name] = path

    async def migrate(self, names: list[str] | None = None) -> list[str]:
        """Apply pending migrations; returns the names whose schema was upgraded."""
        assert self.engine is not None, "database is not open"
        upgraded = []
        async with self.engine.begin() as conn:
            await conn.execute(
                text(f"CREATE TABLE IF NOT EXISTS {_STATE_TABLE} (name VARCHAR(200) PRIMARY KEY, fingerprint VARCHAR(64))")
            )
            rows = (await conn.execute(text(f"SELECT name, fingerprint FROM {_STATE_TABLE}"))).all()
        known = {row[0]: row[1] for row in rows}
        for name, folder in self.migrations.items():
            if names is not None and name not in names:
                continue
            fingerprint = _folder_fingerprint(folder)
            if known.get(name) == fingerprint:
                continue
            async with self.engine.begin() as conn:
                await conn.run_sync(_run_alembic_upgrade, name, str(folder))
                await conn.execute(text(f"DELETE FROM {_STATE_TABLE} WHERE name = :n"), {"n": name})
                await conn.execute(
                    text(f"INSERT INTO {_STATE_TABLE} (name, fingerprint) VALUES (:n, :f)"),
                    {"n": name, "f": fingerprint},
                )
            upgraded.append(name)
        return upgraded

    async def ping(self) -> bool:
        """True when a trivial query succeeds."""
        if self.engine is None:
            return False
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def healthy(self, max_age: float = 1.0) -> bool:
        """:meth:`ping`, reusing a result younger than ``max_age`` seconds, with concurrent callers
        sharing one ping: a polled health route must not cost a database round trip per request
        (a ping through the aiosqlite thread costs about twice a whole bare request)."""
        if self.engine is None:
            return False
        checked_at, ok = self._health
        if time.monotonic() - checked_at < max_age:
            return ok
        task = self._health_task
        if task is None or task.get_loop() is not asyncio.get_running_loop():  # none, or left by a closed loop
            self._health_task = asyncio.ensure_future(self._refresh_health())
        # shield: a caller that disconnects must not cancel the ping the others are waiting for
        return await asyncio.shield(self._health_task)

    async def _refresh_health(self) -> bool:
        try:
            ok = await self.ping()
            self._health = (time.monotonic(), ok)
            return ok
        finally:
            self._health_task = None

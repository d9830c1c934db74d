"""Storage: one SQLAlchemy async engine per kernel, SQLite (WAL) by default, PostgreSQL by URL.

Each plugin owns its tables and their schema history: Alembic revision scripts in a folder it
registers through ``register_migrations``, with a version table of its own. Migrations are applied
at start; a fingerprint of each folder is kept so an unchanged schema costs no Alembic import.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_STATE_TABLE = "librefang_schema_state"


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

    async def open(self) -> None:
        """Create the engine (and the SQLite file's folder)."""
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        self._health = (float("-inf"), False)
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

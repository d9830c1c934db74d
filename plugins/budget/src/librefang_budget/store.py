"""Usage records in the database: writing one per LLM call, and the sums budgets and analytics read.

Windows are UTC: ``hourly`` is the last 3600 seconds (rolling), ``daily`` runs since 00:00 UTC and
``monthly`` since the 1st of the month 00:00 UTC. Sums are computed with portable SQL (``CASE`` inside
``SUM``), so SQLite and PostgreSQL give the same answers and several daemons may share the tables.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from librefang_budget.models import agent_limits, alerts, usage

HOUR = 3600.0
DAY = 86400.0
INSERT_USAGE = usage.insert()
USAGE_COLUMNS = tuple(c.name for c in usage.columns if c.name != "id")
# SQLite: straight to the driver (qmark parameters), without SQLAlchemy's statement handling
# (these values need no conversion: sqlite3 stores a bool as 0/1, as the Boolean column does).
INSERT_USAGE_SQLITE = (f"INSERT INTO {usage.name} ({', '.join(USAGE_COLUMNS)}) "
                       f"VALUES ({', '.join('?' for _ in USAGE_COLUMNS)})")
LIMIT_FIELDS = ("max_cost_per_hour_usd", "max_cost_per_day_usd", "max_cost_per_month_usd", "max_llm_tokens_per_hour")


@dataclass(frozen=True)
class Windows:
    """Start times (epoch seconds) of the three windows at ``now``."""

    now: float
    hour: float
    day: float
    month: float

    @classmethod
    def at(cls, now: float | None = None) -> Windows:
        now = time.time() if now is None else now
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(now, now - HOUR, day.timestamp(), day.replace(day=1).timestamp())

    @property
    def earliest(self) -> float:
        return min(self.hour, self.day, self.month)

    def period(self, window: str) -> str:
        """The key of the period an alert is raised once in (clock hour, date, month)."""
        moment = dt.datetime.fromtimestamp(self.now, dt.UTC)
        return {"hourly": moment.strftime("%Y-%m-%dT%H"), "daily": moment.strftime("%Y-%m-%d"),
                "monthly": moment.strftime("%Y-%m")}.get(window, moment.strftime("%Y-%m-%dT%H"))

    def resets_in(self, window: str) -> int | None:
        """Seconds until a calendar window starts again (None for the rolling hour)."""
        moment = dt.datetime.fromtimestamp(self.now, dt.UTC)
        if window == "daily":
            return max(1, int(self.day + DAY - self.now))
        if window == "monthly":
            first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            following = (first + dt.timedelta(days=32)).replace(day=1)
            return max(1, int(following.timestamp() - self.now))
        return None


@dataclass
class Spend:
    """What one scope spent in each window."""

    hourly: float = 0.0
    daily: float = 0.0
    monthly: float = 0.0
    tokens_hour: int = 0

    def of(self, window: str) -> float:
        return {"hourly": self.hourly, "daily": self.daily, "monthly": self.monthly,
                "tokens_hour": float(self.tokens_hour)}[window]


def _window_columns(w: Windows, where: Any = None) -> list[Any]:
    created, cost = usage.c.created_at, usage.c.cost_usd
    tokens = usage.c.input_tokens + usage.c.output_tokens

    def since(start: float) -> Any:
        return created >= start if where is None else sa.and_(created >= start, where)

    return [
        sa.func.coalesce(sa.func.sum(sa.case((since(w.hour), cost), else_=0.0)), 0.0),
        sa.func.coalesce(sa.func.sum(sa.case((since(w.day), cost), else_=0.0)), 0.0),
        sa.func.coalesce(sa.func.sum(sa.case((since(w.month), cost), else_=0.0)), 0.0),
        sa.func.coalesce(sa.func.sum(sa.case((since(w.hour), tokens), else_=0)), 0),
    ]


def _filter(where: dict[str, str]) -> Any:
    clauses = [usage.c[column] == value for column, value in where.items()]
    return sa.and_(*clauses) if clauses else None


def _insert_usage(conn: Any, rows: list[dict[str, Any]], values: list[tuple[Any, ...]]) -> None:
    """Usage rows in the caller's transaction (``Database.run``): on SQLite's own driver straight
    through its cursor (in the transaction SQLAlchemy commits), else one compiled statement."""
    if conn.dialect.driver == "pysqlite":
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.executemany(INSERT_USAGE_SQLITE, values)
        finally:
            cursor.close()
    else:
        conn.execute(INSERT_USAGE, rows)


class UsageStore:
    """Reads and writes the budget plugin's tables through the kernel's database."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def spend(self, w: Windows, *, agent_id: str | None = None, provider: str | None = None) -> Spend:
        """Spend of everything (no filter), one agent or one provider, in each window at ``w``."""
        query = sa.select(*_window_columns(w)).where(usage.c.created_at >= w.earliest)
        if agent_id is not None:
            query = query.where(usage.c.agent_id == agent_id)
        if provider is not None:
            query = query.where(usage.c.provider == provider)
        async with self.db.begin() as conn:
            row = (await conn.execute(query)).one()
        return Spend(float(row[0]), float(row[1]), float(row[2]), int(row[3]))

    async def spends(self, w: Windows, filters: list[dict[str, str]], *, add: dict[str, Any] | None = None) -> list[Spend]:
        """The spend of several scopes (each a column filter; ``{}`` = everything) in one query;
        with ``add``, that usage row is stored first in the same transaction (one round trip)."""
        if not filters and add is None:
            return []
        columns = [column for where in filters for column in _window_columns(w, _filter(where))]

        def run(conn: Any) -> Any:  # one transaction, one hop to the database thread (Database.run)
            if add is not None:
                conn.execute(usage.insert().values(**add))
            return conn.execute(sa.select(*columns).where(usage.c.created_at >= w.earliest)).one() if columns else None

        row = await self.db.run(run)
        if row is None:
            return []
        return [Spend(float(row[i]), float(row[i + 1]), float(row[i + 2]), int(row[i + 3]))
                for i in range(0, len(columns), 4)]

    async def add(self, row: dict[str, Any]) -> None:
        """Store one usage row."""
        await self.add_many([row])

    async def add_many(self, rows: list[dict[str, Any]]) -> None:
        """Store usage rows (every column but ``id``) in one transaction."""
        if not rows:
            return
        values = [tuple(row[c] for c in USAGE_COLUMNS) for row in rows]
        await self.db.run(_insert_usage, rows, values)

    async def spend_by(self, column: str, w: Windows) -> dict[str, Spend]:
        """Spend per ``agent_id`` or ``provider`` in each window (one grouped query)."""
        key = usage.c[column]
        query = sa.select(key, *_window_columns(w)).where(usage.c.created_at >= w.earliest).group_by(key)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        return {r[0]: Spend(float(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows}

    async def hourly_retry_after(self, w: Windows, cap: float, *, agent_id: str | None = None,
                                 provider: str | None = None, tokens: bool = False) -> int:
        """Seconds until the rolling hour's spend (or tokens) falls below ``cap`` again."""
        amount = (usage.c.input_tokens + usage.c.output_tokens) if tokens else usage.c.cost_usd
        query = sa.select(usage.c.created_at, amount).where(usage.c.created_at >= w.hour)
        if agent_id is not None:
            query = query.where(usage.c.agent_id == agent_id)
        if provider is not None:
            query = query.where(usage.c.provider == provider)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query.order_by(usage.c.created_at).limit(100_000))).all()
        remaining = sum(float(r[1]) for r in rows)
        for created_at, value in rows:
            remaining -= float(value)
            if remaining < cap:
                return max(1, int(created_at + HOUR - w.now) + 1)
        return int(HOUR)

    # -- per-agent caps ---------------------------------------------------------------------------
    async def agent_limits(self, agent_id: str) -> dict[str, Any]:
        """The overrides stored for an agent (only the columns that are set)."""
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(agent_limits).where(agent_limits.c.agent_id == agent_id))).first()
        if row is None:
            return {}
        return {f: row._mapping[f] for f in LIMIT_FIELDS if row._mapping[f] is not None}

    async def all_agent_limits(self) -> dict[str, dict[str, Any]]:
        async with self.db.begin() as conn:
            rows = (await conn.execute(sa.select(agent_limits).limit(100_000))).all()
        return {r.agent_id: {f: r._mapping[f] for f in LIMIT_FIELDS if r._mapping[f] is not None} for r in rows}

    async def set_agent_limits(self, agent_id: str, values: dict[str, Any]) -> None:
        """Merge ``values`` into the agent's overrides (insert or update in one transaction)."""
        async with self.db.begin() as conn:
            found = (await conn.execute(
                sa.select(agent_limits.c.agent_id).where(agent_limits.c.agent_id == agent_id))).first()
            if found is None:
                await conn.execute(agent_limits.insert().values(agent_id=agent_id, updated_at=time.time(), **values))
            else:
                await conn.execute(agent_limits.update().where(agent_limits.c.agent_id == agent_id)
                                   .values(updated_at=time.time(), **values))

    # -- alerts -------------------------------------------------------------------------------------
    async def claim_alert(self, kind: str, scope: str, scope_id: str, window: str, period: str,
                          spend: float, cap: float) -> bool:
        """True the first time (in any process) this alert is raised for this period."""
        try:
            async with self.db.begin() as conn:
                await conn.execute(alerts.insert().values(
                    kind=kind, scope=scope, scope_id=scope_id[:200], window_name=window, period=period,
                    spend=spend, cap=cap, created_at=time.time()))
        except sa.exc.IntegrityError:
            return False
        return True

    # -- retention ------------------------------------------------------------------------------------
    async def trim(self, older_than: float) -> int:
        """Delete usage records and alerts created before ``older_than``; returns the rows removed."""
        async with self.db.begin() as conn:
            removed = (await conn.execute(usage.delete().where(usage.c.created_at < older_than))).rowcount or 0
            await conn.execute(alerts.delete().where(alerts.c.created_at < older_than))
        return int(removed)

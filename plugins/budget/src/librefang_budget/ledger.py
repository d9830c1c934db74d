"""Running spend totals in memory, so enforcing a cap and raising an alert need no query per LLM call.

One :class:`Totals` per scope key (``("global", "")``, ``("provider", id)``, ``("agent", id)``), loaded
from the database the first time a cap of that scope is checked (one transaction: the day and month
sums plus the rows of the rolling hour), then updated with every metered call. The database stays the
source of truth: usage rows are still written (the ``/api/budget`` and ``/api/usage`` views read
them), and a restart simply loads the totals again.

Exactness: every usage row is written and applied under one lock, and a scope is loaded under the same
lock, so a row is counted exactly once whether it was committed before or after the load. Amounts are
kept as integers (pico-dollars, tokens), so adding and expiring rows never drifts. This is per process:
it is used only on SQLite, where one daemon owns the database; on PostgreSQL, where several daemons
may share the tables, the budget service keeps reading the sums from the database on every call.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from librefang_budget.models import usage
from librefang_budget.store import Spend, Windows, _filter, _window_columns
from librefang_budget.writer import UsageWriter

UNITS = 10**12  # pico-dollars: integer amounts add and subtract exactly
MAX_KEYS = 10_000  # scopes held at once; an evicted scope is loaded again when next needed
Key = tuple[str, str]
SCOPE_COLUMNS = {"provider": "provider", "agent": "agent_id"}


def units(cost: float) -> int:
    """A cost in USD as integer pico-dollars."""
    return round(float(cost) * UNITS)


def key_of(scope: str, scope_id: str) -> Key:
    """The ledger key of a scope; ids are cut as usage rows cut them (agent 64, provider 100)."""
    if scope == "agent":
        return ("agent", scope_id[:64])
    if scope == "provider":
        return ("provider", scope_id[:100])
    return ("global", "")


def where_of(key: Key) -> dict[str, str]:
    """The usage-row filter of a key (``{}`` for the global scope)."""
    column = SCOPE_COLUMNS.get(key[0])
    return {column: key[1]} if column else {}


class Totals:
    """One scope's spend: today's and this month's sums, and the rows of the rolling hour."""

    __slots__ = ("day_start", "month_start", "daily", "monthly", "hour", "hour_cost", "hour_tokens")

    def __init__(self, w: Windows, daily: int, monthly: int, hour: list[tuple[float, int, int]]) -> None:
        self.day_start, self.month_start = w.day, w.month
        self.daily, self.monthly = daily, monthly
        self.hour: deque[tuple[float, int, int]] = deque(sorted(hour))
        self.hour_cost = sum(c for _, c, _ in self.hour)
        self.hour_tokens = sum(t for _, _, t in self.hour)

    def roll(self, w: Windows) -> None:
        """Move to the windows at ``w``: a new day or month starts from 0; rows leave the rolling hour."""
        if w.day > self.day_start:
            self.day_start, self.daily = w.day, 0
        if w.month > self.month_start:
            self.month_start, self.monthly = w.month, 0
        hour = self.hour
        while hour and hour[0][0] < w.hour:  # the SQL counts created_at >= now - 3600
            _, cost, tokens = hour.popleft()
            self.hour_cost -= cost
            self.hour_tokens -= tokens

    def add(self, created_at: float, cost: int, tokens: int) -> None:
        """Count one usage row."""
        if created_at >= self.day_start:
            self.daily += cost
        if created_at >= self.month_start:
            self.monthly += cost
        entry = (created_at, cost, tokens)
        if self.hour and created_at < self.hour[-1][0]:
            bisect.insort(self.hour, entry)  # a clock step back: keep the hour ordered for roll()
        else:
            self.hour.append(entry)
        self.hour_cost += cost
        self.hour_tokens += tokens

    def spend(self, w: Windows) -> Spend:
        self.roll(w)
        return Spend(self.hour_cost / UNITS, self.daily / UNITS, self.monthly / UNITS, self.hour_tokens)


def _load(conn: Any, w: Windows, key: Key) -> Totals:
    where = _filter(where_of(key))
    columns = _window_columns(w, where)
    sums = conn.execute(sa.select(columns[1], columns[2]).where(usage.c.created_at >= w.earliest)).one()
    rows = sa.select(usage.c.created_at, usage.c.cost_usd, usage.c.input_tokens + usage.c.output_tokens)
    rows = rows.where(usage.c.created_at >= w.hour)
    if where is not None:
        rows = rows.where(where)
    hour = [(float(r[0]), units(r[1]), int(r[2])) for r in conn.execute(rows)]
    return Totals(w, units(sums[0]), units(sums[1]), hour)


class Ledger:
    """The running totals of the scopes whose caps were checked, kept exact with the usage table."""

    def __init__(self, db: Any, write: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        self.db = db
        self.lock = asyncio.Lock()  # rows are written and scopes loaded one at a time
        self.totals: dict[Key, Totals] = {}
        self.loads = 0
        self._write = write  # one transaction for the rows given
        self.writer = UsageWriter(self._commit)

    async def spends(self, w: Windows, keys: list[Key]) -> list[Spend]:
        """The spend of each scope at ``w`` (loading the scopes not held yet: one query each)."""
        missing = [k for k in keys if k not in self.totals]
        if missing:
            await self._load(w, missing)
        return [self.totals[k].spend(w) for k in keys]

    async def _load(self, w: Windows, keys: list[Key]) -> None:
        async with self.lock:  # no row is written meanwhile: each row is counted once
            keys = [k for k in dict.fromkeys(keys) if k not in self.totals]
            if not keys:
                return
            loaded = await self.db.run(lambda conn: [_load(conn, w, k) for k in keys])
            for k, totals in zip(keys, loaded, strict=True):
                while len(self.totals) >= MAX_KEYS:
                    del self.totals[next(iter(self.totals))]  # the oldest loaded scope
                self.totals[k] = totals
            self.loads += len(keys)

    async def record(self, row: dict[str, Any]) -> None:
        """Write one usage row and count it in every scope held; returns once it is committed.

        Rows of concurrent calls share a transaction (:class:`~librefang_budget.writer.UsageWriter`).
        Once handed over, the row is written and counted even if the caller is cancelled (a
        committed row that was not counted would let spend slip past a cap)."""
        await self.writer.add(row)

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        async with self.lock:
            await self._write(rows)
            for row in rows:
                self._count(row)

    def _count(self, row: dict[str, Any]) -> None:
        created_at = float(row["created_at"])
        cost = units(row["cost_usd"])
        tokens = int(row["input_tokens"]) + int(row["output_tokens"])
        w = None
        for key in (("global", ""), key_of("provider", row["provider"]), key_of("agent", row["agent_id"])):
            totals = self.totals.get(key)
            if totals is not None:
                w = w or Windows.at(created_at)
                totals.roll(w)  # a day or month that began is started before the row counts in it
                totals.add(created_at, cost, tokens)

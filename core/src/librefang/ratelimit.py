"""GCRA rate limiting, cost-aware, with bounded per-client state.

GCRA keeps one number per client, its theoretical arrival time (TAT). A request of cost ``c`` is
allowed when ``max(TAT, now) + c·T - now <= burst·T``; the quota refills continuously at one token
per ``T = 60 / per_minute`` seconds. A client whose TAT is in the past holds no state worth keeping,
so sweeping those entries loses nothing, and the table has a hard maximum size.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class RateLimiter(Protocol):
    """The limiter interface (a shared store can implement it for several processes)."""

    def take(self, key: str, cost: int, now: float | None = None) -> tuple[bool, float]:
        """Charge ``cost`` tokens to ``key``: (allowed, seconds until the request would fit)."""
        ...

    def __len__(self) -> int: ...


class GcraLimiter:
    """In-process GCRA limiter keyed by client address."""

    def __init__(self, per_minute: int, burst: int | None = None, max_keys: int = 100_000) -> None:
        self.interval = 60.0 / per_minute
        self.burst = burst or per_minute
        self.tolerance = self.interval * self.burst
        self.max_keys = max_keys
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._last_sweep = 0.0
        self.denied = 0

    def take(self, key: str, cost: int, now: float | None = None) -> tuple[bool, float]:
        now = time.monotonic() if now is None else now
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        new_tat = tat + cost * self.interval
        if new_tat - now > self.tolerance:
            self.denied += 1
            return False, new_tat - now - self.tolerance
        if key in self._tat:
            self._tat.move_to_end(key)
        elif len(self._tat) >= self.max_keys:
            self._make_room(now)
        self._tat[key] = new_tat
        return True, 0.0

    def _make_room(self, now: float) -> None:
        # First drop every client that has fully refilled; if still full, the least recently seen.
        if now - self._last_sweep > 1.0:
            self.sweep(now)
        while len(self._tat) >= self.max_keys:
            self._tat.popitem(last=False)

    def sweep(self, now: float | None = None) -> int:
        """Remove clients whose quota has fully refilled; returns how many were removed."""
        now = time.monotonic() if now is None else now
        self._last_sweep = now
        stale = [k for k, tat in self._tat.items() if tat <= now]
        for key in stale:
            del self._tat[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self._tat)

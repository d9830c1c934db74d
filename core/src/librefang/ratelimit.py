"""GCRA rate limiting, cost-aware, with bounded per-client state; and the route cost table.

GCRA keeps one number per client, its theoretical arrival time (TAT). A request of cost ``c`` is
allowed when ``max(TAT, now) + c·T - now <= burst·T``; the quota refills continuously at one token
per ``T = 60 / per_minute`` seconds. A client whose TAT is in the past has its full quota again,
so forgetting it loses nothing: that is what makes the state cheap to bound.

The table is an LRU-ordered dict capped at ``max_keys``. Every call pops a couple of stale entries
from its cold end (least recently seen clients, the likeliest to have refilled), so idle clients
disappear within about one refill period without any full scan; when the table is full the least
recently seen client is evicted (it merely gets a fresh quota). Memory therefore never exceeds
``max_keys`` entries whatever the number of source addresses.

The edge talks to a :class:`RateLimiter` (``acquire`` is async) so a store shared by several
daemon processes can replace the in-process :class:`GcraLimiter`.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

# -- route costs (reference table, core brief §8.3) ---------------------------------------------------
DEFAULT_COST = 5
_COST_1_ANY = frozenset({"/api/health", "/api/ready"})
_COST_1_GET = frozenset({
    "/api/status", "/api/version", "/api/versions", "/api/tools", "/api/dashboard/snapshot",
    "/api/approvals/count", "/api/providers", "/api/media/providers", "/api/metrics",
    "/api/health/detail", "/api/openapi.json", "/api/config/schema",
})
_COST_2_GET = frozenset({"/api/agents", "/api/skills", "/api/peers", "/api/config"})
_COST_50_POST = frozenset({"/api/agents", "/api/pairing/complete", "/api/skills/install"})
_ONE_AGENT = re.compile(r"^/api/agents/[^/]+$")


def route_cost(method: str, path: str) -> int:
    """The limiter cost of ``method path`` from the reference table (``path`` may be a template).

    1: health/ready and cheap reads; 2: list agents/skills/peers, config; 3: usage; 5: audit and the
    default; 10: marketplace reads, ``PATCH /api/agents/{id}``, skill uninstall; 30: POSTs to a
    ``message`` endpoint; 50: spawn an agent, pairing, skill install; 100: POSTs that start a run,
    migrate.
    """
    method = method.upper()
    path = path.rstrip("/") or "/"
    if path.startswith("/api/v1/"):
        path = "/api/" + path[len("/api/v1/"):]
    if path in _COST_1_ANY:
        return 1
    if method in ("GET", "HEAD"):
        if path in _COST_1_GET:
            return 1
        if path in _COST_2_GET:
            return 2
        if path == "/api/usage":
            return 3
        if path.startswith("/api/marketplace"):
            return 10
        return DEFAULT_COST
    if method == "POST":
        segments = path.split("/")
        if path in _COST_50_POST:
            return 50
        if path == "/api/migrate" or "run" in segments or "runs" in segments:
            return 100
        if any(segment.startswith("message") for segment in segments):
            return 30
        if path == "/api/skills/uninstall":
            return 10
        return DEFAULT_COST
    if method == "PATCH" and _ONE_AGENT.match(path):
        return 10
    return DEFAULT_COST


# -- the limiter ---------------------------------------------------------------------------------
@runtime_checkable
class RateLimiter(Protocol):
    """What the edge needs from a limiter. ``denied`` counts refusals since start."""

    denied: int

    async def acquire(self, key: str, cost: int) -> tuple[bool, float]:
        """Charge ``cost`` tokens to ``key``: ``(allowed, seconds until it would fit)``."""
        ...

    def __len__(self) -> int:
        """How many clients the limiter currently holds state for."""
        ...

    def describe(self) -> dict[str, Any]:
        """Its real configuration, for ``/api/security``."""
        ...


class GcraLimiter:
    """In-process GCRA limiter keyed by client address (one float per client)."""

    # Stale entries removed from the cold end per call: > 1 so the sweep outpaces new clients.
    SWEEP_PER_CALL = 2

    def __init__(self, per_minute: int, burst: int | None = None, max_keys: int = 100_000) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute
        self.burst = burst or per_minute
        self.tolerance = self.interval * self.burst
        self.max_keys = max(1, max_keys)
        self._tat: OrderedDict[str, float] = OrderedDict()
        self.denied = 0
        self.evicted = 0

    def take(self, key: str, cost: int, now: float | None = None) -> tuple[bool, float]:
        """Synchronous core of :meth:`acquire` (``now`` injectable for tests)."""
        now = time.monotonic() if now is None else now
        table = self._tat
        self._sweep_cold_end(now)
        tat = table.get(key)
        if tat is None or tat < now:
            tat = now
        new_tat = tat + cost * self.interval
        if new_tat - now > self.tolerance:
            self.denied += 1
            return False, new_tat - now - self.tolerance
        if key in table:
            table.move_to_end(key)
        elif len(table) >= self.max_keys:
            table.popitem(last=False)  # least recently seen client: it just gets a fresh quota
            self.evicted += 1
        table[key] = new_tat
        return True, 0.0

    async def acquire(self, key: str, cost: int) -> tuple[bool, float]:
        """Charge ``cost`` tokens to ``key`` (see :class:`RateLimiter`)."""
        return self.take(key, cost)

    def _sweep_cold_end(self, now: float) -> None:
        table = self._tat
        for _ in range(self.SWEEP_PER_CALL):
            if not table:
                return
            key = next(iter(table))
            if table[key] > now:
                return
            del table[key]

    def sweep(self, now: float | None = None) -> int:
        """Remove every client whose quota has fully refilled; returns how many were removed."""
        now = time.monotonic() if now is None else now
        stale = [k for k, tat in self._tat.items() if tat <= now]
        for key in stale:
            del self._tat[key]
        return len(stale)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "in-process",
            "algorithm": "GCRA",
            "per_minute": self.per_minute,
            "burst": self.burst,
            "tracked_clients": len(self._tat),
            "max_tracked_clients": self.max_keys,
            "denied_total": self.denied,
            "evicted_total": self.evicted,
        }

    def __len__(self) -> int:
        return len(self._tat)

"""GCRA rate limiting, cost-aware, with bounded per-client state; and the route cost table.

GCRA keeps one number per client, its theoretical arrival time (TAT). A request of cost ``c`` is
allowed when ``max(TAT, now) + c·T - now <= burst·T``; the quota refills continuously at one token
per ``T = 60 / per_minute`` seconds. A client whose TAT is in the past has its full quota again,
so forgetting it loses nothing: that is what makes the state cheap to bound.

The state is bounded by construction (see :class:`GcraLimiter`): two generations of plain dicts,
rotated by size and by time, so idle clients disappear within two refill periods without any scan,
and memory never exceeds ``max_keys`` entries whatever the number of source addresses.

The edge talks to a :class:`RateLimiter` (``acquire`` is async) so a store shared by several
daemon processes can replace the in-process :class:`GcraLimiter`.
"""

from __future__ import annotations

import re
import time
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
    """In-process GCRA limiter keyed by client address (one float per client, two generations).

    State lives in two dicts: ``young`` takes every write, ``old`` is the previous generation and is
    only read (a hit is promoted back into ``young``). The generations rotate (``old`` dropped,
    ``young`` becomes ``old``) when ``young`` holds half of ``max_keys`` or when one refill period
    has passed since the last rotation. A client's TAT is never more than one refill period past its
    last request, so a time-based rotation drops only clients whose quota is full again; a size-based
    one (a flood of new addresses) drops the least recently seen half, which merely get a fresh
    quota. Every operation is a couple of plain dict operations, and the total never exceeds
    ``max_keys``.
    """

    def __init__(self, per_minute: int, burst: int | None = None, max_keys: int = 100_000) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute
        self.burst = burst or per_minute
        self.tolerance = self.interval * self.burst  # one full refill period, in seconds
        self.max_keys = max(2, max_keys)
        self._half = self.max_keys // 2
        self._young: dict[str, float] = {}
        self._old: dict[str, float] = {}
        self._rotated_at: float | None = None  # set by the first call (tests inject their own clock)
        self.denied = 0
        self.evicted = 0

    def take(self, key: str, cost: int, now: float | None = None) -> tuple[bool, float]:
        """Synchronous core of :meth:`acquire` (``now`` injectable for tests)."""
        if now is None:
            now = time.monotonic()
        rotated_at = self._rotated_at
        if rotated_at is None:
            self._rotated_at = now
        elif now - rotated_at >= self.tolerance:
            self._rotate(now, full=False)
        young = self._young
        tat = young.get(key)
        if tat is None:
            tat = self._old.pop(key, None)
            if len(young) >= self._half:
                self._rotate(now, full=True)
                young = self._young
        base = tat if tat is not None and tat > now else now
        new_tat = base + cost * self.interval
        if new_tat - now > self.tolerance:
            self.denied += 1
            if tat is not None:
                young[key] = tat  # keep the state (it may have just been promoted from old)
            return False, new_tat - now - self.tolerance
        young[key] = new_tat
        return True, 0.0

    async def acquire(self, key: str, cost: int) -> tuple[bool, float]:
        """Charge ``cost`` tokens to ``key`` (see :class:`RateLimiter`)."""
        return self.take(key, cost)

    def _rotate(self, now: float, *, full: bool) -> None:
        if full:
            # Clients dropped before their quota refilled: they get a fresh one (counted).
            self.evicted += sum(1 for tat in self._old.values() if tat > now)
        self._old = self._young
        self._young = {}
        self._rotated_at = now

    def sweep(self, now: float | None = None) -> int:
        """Remove every client whose quota has fully refilled; returns how many were removed."""
        now = time.monotonic() if now is None else now
        removed = 0
        for table in (self._young, self._old):
            stale = [k for k, tat in table.items() if tat <= now]
            for key in stale:
                del table[key]
            removed += len(stale)
        return removed

    def describe(self) -> dict[str, Any]:
        """Configuration and live counters, for ``/api/security``."""
        return {
            "backend": "in-process",
            "algorithm": "GCRA",
            "per_minute": self.per_minute,
            "burst": self.burst,
            "tracked_clients": len(self),
            "max_tracked_clients": self.max_keys,
            "denied_total": self.denied,
            "evicted_total": self.evicted,
        }

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

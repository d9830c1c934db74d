"""The budget service of one kernel: meters every LLM call, refuses a call once a cap is reached, and
raises an alert (bus event + audit entry) once per period when spend passes the alert threshold.

Caps come from three scopes: ``global`` (``[budget] max_*_usd``), ``provider``
(``[budget.providers.<id>]``) and ``agent`` (``PUT /api/budget/agents/{id}`` overrides, else the
manifest's ``[resources]``, else ``default_max_llm_tokens_per_hour`` for tokens). A cap of 0 is
unlimited; a cap is reached when the spend in its window is at least the cap (the call that crosses a
cap is allowed, the next one is refused).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from librefang.errors import ApiError, ServiceUnavailable, TooManyRequests

from librefang_budget.config import BudgetConfig
from librefang_budget.ledger import Key, Ledger, key_of
from librefang_budget.pricing import call_cost, tokens
from librefang_budget.store import LIMIT_FIELDS, Spend, UsageStore, Windows
from librefang_budget.writer import UsageWriter

log = logging.getLogger("librefang.budget")

SERVICE_KEY = "budget"
SOURCE = "budget"
WINDOW_WORDS = {"hourly": "hourly", "daily": "daily", "monthly": "monthly", "tokens_hour": "tokens-per-hour"}
OVERRIDE_TTL = 2.0
MAX_CACHED_AGENTS = 10_000
MAX_CLAIMED = 10_000
# Agent events after which the manifest's caps are read again (a state change leaves them as they are).
CAPS_EVENTS_IGNORED = frozenset({"agent.state_changed"})
AGENT_WINDOWS = {"max_cost_per_hour_usd": "hourly", "max_cost_per_day_usd": "daily",
                 "max_cost_per_month_usd": "monthly", "max_llm_tokens_per_hour": "tokens_hour"}


@dataclass(frozen=True)
class Cap:
    """One configured cap: ``scope`` is global, provider or agent; ``window`` hourly, daily, monthly or
    tokens_hour (LLM tokens in the last hour)."""

    scope: str
    scope_id: str
    window: str
    limit: float

    def describe(self, spend: float, agent_name: str = "") -> str:
        agent = f"agent {agent_name!r} ({self.scope_id})" if agent_name else f"agent {self.scope_id!r}"
        who = {"global": "the daemon", "provider": f"provider {self.scope_id!r}", "agent": agent}[self.scope]
        if self.window == "tokens_hour":
            return f"{who} used {int(spend)} LLM tokens in the last hour; the cap is {int(self.limit)}"
        return f"{who} spent ${spend:.4f} {self._span()}; the {WINDOW_WORDS[self.window]} cap is ${self.limit:.4f}"

    def _span(self) -> str:
        return {"hourly": "in the last hour", "daily": "today (UTC)", "monthly": "this month (UTC)"}[self.window]


def _key(where: dict[str, str]) -> Key:
    if "agent_id" in where:
        return key_of("agent", where["agent_id"])
    if "provider" in where:
        return key_of("provider", where["provider"])
    return key_of("global", "")


def fraction(spend: float, limit: float) -> float:
    """``spend / limit`` (0 when unlimited), rounded for display."""
    return round(spend / limit, 6) if limit > 0 else 0.0


class BudgetService:
    """Metering, enforcement and the views the routes show (``kernel.services["budget"]``)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.store = UsageStore(kernel.db)
        self.metered = 0
        self.refused = 0
        self.alerts_raised = 0
        self._overrides: dict[str, tuple[float, dict[str, Any]]] = {}
        # Effective per-agent caps, read from the manifest at most every OVERRIDE_TTL seconds and
        # dropped at once when the agents plugin announces a change of that agent (the bus delivers
        # synchronously into this queue, so it is drained before every use).
        self._caps: dict[str, tuple[float, dict[str, float], Any]] = {}
        # (agent id, provider) -> (the agent's caps it was built from, [budget], caps_for's groups)
        self._groups: dict[tuple[str, str], tuple[dict[str, float], Any, list[Any]]] = {}
        self._agent_events = kernel.bus.subscribe("agent.*", maxsize=1000, name="budget:agent-caps")
        self._agent_events_dropped = 0
        # Alerts this process already raised or saw raised (their period key): no insert attempt again.
        self._claimed: set[tuple[str, str, str, str, str]] = set()
        # Running totals (SQLite: one daemon owns the database); None keeps the per-call query.
        self.ledger = Ledger(kernel.db, self.store.add_many) if getattr(kernel.db, "is_sqlite", False) else None
        # Rows of uncapped calls on PostgreSQL (the ledger writes them on SQLite), in group commits too.
        self.writer = self.ledger.writer if self.ledger is not None else UsageWriter(self.store.add_many)

    def close(self) -> None:
        """Stop listening to agent events (plugin shutdown)."""
        self._agent_events.close()

    async def drain(self) -> None:
        """Wait for the usage rows still being written (plugin shutdown)."""
        await self.writer.drain()

    @property
    def config(self) -> BudgetConfig:
        return self.kernel.config.section("budget")

    # -- agents -------------------------------------------------------------------------------------
    async def agent_record(self, agent_id: str) -> Any:
        """The agent's registry record (400 bad id, 404 unknown, 503 when the agents plugin is not running)."""
        from librefang_agents import api as agents_api

        try:
            registry = agents_api.registry(self.kernel)
        except KeyError:
            raise ServiceUnavailable("the agents plugin is not running", code="agents_unavailable") from None
        return await registry.get(agent_id)

    def _drain_agent_events(self) -> None:
        events = self._agent_events
        if events.dropped != self._agent_events_dropped:  # some events were lost: forget every agent
            self._agent_events_dropped = events.dropped
            self._caps.clear()
        queue = events.queue
        while not queue.empty():
            event = queue.get_nowait()
            if event.topic not in CAPS_EVENTS_IGNORED:
                self._caps.pop(str(event.data.get("agent_id") or ""), None)

    async def cached_agent_caps(self, agent_id: str) -> dict[str, float]:
        """:meth:`agent_caps` of a metered call: cached for ``OVERRIDE_TTL`` seconds, dropped when the
        agent changes (``agent.*`` events), its overrides are set or ``[budget]`` changes."""
        self._drain_agent_events()
        now = time.monotonic()
        cached = self._caps.get(agent_id)
        if cached is not None and cached[0] > now and cached[2] is self.config:
            return cached[1]
        values = await self.agent_caps(agent_id)
        if len(self._caps) >= MAX_CACHED_AGENTS:
            self._caps.clear()
        self._caps[agent_id] = (now + OVERRIDE_TTL, values, self.config)
        return values

    async def agent_caps(self, agent_id: str, record: Any = None) -> dict[str, float]:
        """Effective per-agent caps: stored override, else manifest ``[resources]``, else defaults."""
        values: dict[str, float] = dict.fromkeys(LIMIT_FIELDS, 0.0)
        if record is None:
            try:
                record = await self.agent_record(agent_id)
            except ApiError:  # a killed agent or no agents plugin: only the overrides apply
                record = None
        if record is not None:
            resources = record.parsed().resources
            for name in LIMIT_FIELDS:
                values[name] = float(getattr(resources, name, 0) or 0)
        if not values["max_llm_tokens_per_hour"]:
            values["max_llm_tokens_per_hour"] = float(self.config.default_max_llm_tokens_per_hour)
        values.update({k: float(v) for k, v in (await self.overrides(agent_id)).items()})
        return values

    async def overrides(self, agent_id: str) -> dict[str, Any]:
        """The agent's stored caps, cached for ``OVERRIDE_TTL`` seconds: two reads per LLM call would
        otherwise each cost a database round trip (another daemon's change shows within the TTL)."""
        now = time.monotonic()
        cached = self._overrides.get(agent_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        values = await self.store.agent_limits(agent_id)
        if len(self._overrides) >= MAX_CACHED_AGENTS:
            self._overrides.clear()
        self._overrides[agent_id] = (now + OVERRIDE_TTL, values)
        return values

    async def set_overrides(self, agent_id: str, values: dict[str, Any]) -> None:
        """Store caps for an agent (merged into what is stored) and drop the cached copy."""
        await self.store.set_agent_limits(agent_id, values)
        self._overrides.pop(agent_id, None)
        self._caps.pop(agent_id, None)

    # -- caps ---------------------------------------------------------------------------------------
    def global_caps(self) -> list[Cap]:
        c = self.config
        return [Cap("global", "", "hourly", c.max_hourly_usd), Cap("global", "", "daily", c.max_daily_usd),
                Cap("global", "", "monthly", c.max_monthly_usd)]

    def provider_caps(self, provider: str) -> list[Cap]:
        budget = self.config.providers.get(provider)
        if budget is None:
            return []
        return [Cap("provider", provider, "hourly", budget.max_cost_per_hour_usd),
                Cap("provider", provider, "daily", budget.max_cost_per_day_usd),
                Cap("provider", provider, "monthly", budget.max_cost_per_month_usd),
                Cap("provider", provider, "tokens_hour", float(budget.max_tokens_per_hour))]

    async def caps_for(self, agent_id: str, provider: str) -> list[tuple[list[Cap], dict[str, str]]]:
        """The caps a call of ``agent_id`` to ``provider`` must respect, grouped by the spend they read
        (each group with the filter of its spend query); groups without any cap are left out.
        The list is shared between calls: read it, do not change it."""
        agent = await self.cached_agent_caps(agent_id)
        config = self.config
        key = (agent_id, provider)
        built = self._groups.get(key)
        # Valid while the agent's cached caps (the same dict until they are read again) and [budget] are.
        if built is not None and built[0] is agent and built[1] is config:
            return built[2]
        groups = [
            (self.global_caps(), {}),
            (self.provider_caps(provider), {"provider": provider}),
            ([Cap("agent", agent_id, AGENT_WINDOWS[k], v) for k, v in agent.items()], {"agent_id": agent_id}),
        ]
        found = [([c for c in caps if c.limit > 0], where) for caps, where in groups if any(c.limit > 0 for c in caps)]
        if len(self._groups) >= MAX_CACHED_AGENTS:
            self._groups.clear()
        self._groups[key] = (agent, config, found)
        return found

    # -- enforcement (before_llm_call) ------------------------------------------------------------------
    async def check(self, call: dict[str, Any]) -> None:
        """Raise 429 ``budget_exceeded`` when any cap of this call's scopes is reached."""
        agent_id, provider = str(call.get("agent_id") or ""), str(call.get("provider") or "")
        groups = await self.caps_for(agent_id, provider)
        if not groups:  # nothing capped for this call
            return
        w = Windows.at()
        spends = await self._spends(w, groups)
        for (caps, where), spend in zip(groups, spends, strict=True):
            for cap in caps:
                used = spend.of(cap.window)
                if used >= cap.limit:
                    await self._refuse(cap, used, w, where, call)

    async def _spends(self, w: Windows, groups: list[tuple[list[Cap], dict[str, str]]]) -> list[Spend]:
        if self.ledger is None:
            return await self.store.spends(w, [where for _, where in groups])
        return await self.ledger.spends(w, [_key(where) for _, where in groups])

    async def _claim(self, kind: str, cap: Cap, period: str, used: float) -> bool:
        """True the first time (in any process) this alert is raised for this period; a claim this
        process already made or lost is not tried again."""
        key = (kind, cap.scope, cap.scope_id, cap.window, period)
        if key in self._claimed:
            return False
        claimed = await self.store.claim_alert(kind, cap.scope, cap.scope_id, cap.window, period, used, cap.limit)
        if len(self._claimed) >= MAX_CLAIMED:
            self._claimed.clear()
        self._claimed.add(key)
        return claimed

    async def _refuse(self, cap: Cap, used: float, w: Windows, where: dict[str, str], call: dict[str, Any]) -> None:
        self.refused += 1
        retry = w.resets_in(cap.window)
        if retry is None:
            retry = await self.store.hourly_retry_after(w, cap.limit, tokens=cap.window == "tokens_hour", **where)
        message = (f"budget exceeded: {cap.describe(used, str(call.get('agent_name') or ''))}. "
                   f"Calls resume in about {retry} s, or raise the cap.")
        details = {"scope": cap.scope, "scope_id": cap.scope_id, "window": cap.window, "spend": round(used, 6),
                   "limit": cap.limit, "retry_after_secs": retry}
        if await self._claim("exceeded", cap, w.period(cap.window), used):
            self.kernel.bus.publish("budget.exceeded", {**details, "agent_id": call.get("agent_id"),
                                                        "provider": call.get("provider")}, source=SOURCE)
            await self.kernel.audit.record("BudgetExceeded", target=f"{cap.scope}:{cap.scope_id or '*'}",
                                           detail={**details, "agent_id": call.get("agent_id")}, outcome="denied")
        log.info("LLM call refused: %s", message)
        raise TooManyRequests(message, code="budget_exceeded", headers={"Retry-After": str(retry)}, details=details)

    # -- metering (after_llm_call) -----------------------------------------------------------------------
    async def meter(self, call: dict[str, Any]) -> dict[str, Any]:
        """Store one usage record for a finished call, then raise any threshold alert it caused."""
        usage = call.get("usage")
        provider, model = str(call.get("provider") or "")[:100], str(call.get("model") or "")[:200]
        cost, priced = await call_cost(self.kernel, provider, model, usage, self.config)
        row = {
            "created_at": time.time(), "agent_id": str(call.get("agent_id") or "")[:64],
            "agent_name": str(call.get("agent_name") or "")[:128], "session_id": str(call.get("session_id") or "")[:64],
            "provider": provider, "model": model, "input_tokens": tokens(usage, "input_tokens"),
            "output_tokens": tokens(usage, "output_tokens"), "cache_read_tokens": tokens(usage, "cache_read_tokens"),
            "cache_write_tokens": tokens(usage, "cache_write_tokens"), "cost_usd": cost, "priced": priced,
            "tool_calls": max(0, int(call.get("tool_calls") or 0)),
            "latency_ms": max(0.0, float(call.get("latency_ms") or 0.0)),
        }
        threshold = self.config.alert_threshold
        groups = await self.caps_for(row["agent_id"], row["provider"]) if threshold > 0 else []  # 0: no alerts
        if not groups:  # nothing capped: only the record is stored
            await (self.writer.add(row) if self.ledger is None else self.ledger.record(row))
            self.metered += 1
            return row
        w = Windows.at(row["created_at"])
        if self.ledger is None:
            spends = await self.store.spends(w, [where for _, where in groups], add=row)
        else:
            await self._spends(w, groups)  # the scopes are loaded before the row is written: it counts once
            await self.ledger.record(row)
            spends = await self._spends(w, groups)
        self.metered += 1
        await self._alerts(w, threshold, groups, spends, row["agent_name"])
        return row

    async def _alerts(self, w: Windows, threshold: float, groups: list[tuple[list[Cap], dict[str, str]]],
                      spends: list[Spend], agent_name: str = "") -> None:
        for (caps, _where), spend in zip(groups, spends, strict=True):
            for cap in caps:
                used = spend.of(cap.window)
                if used < threshold * cap.limit:
                    continue
                if not await self._claim("alert", cap, w.period(cap.window), used):
                    continue
                self.alerts_raised += 1
                data = {"scope": cap.scope, "scope_id": cap.scope_id, "window": cap.window, "spend": round(used, 6),
                        "limit": cap.limit, "threshold": threshold, "fraction": fraction(used, cap.limit),
                        "message": f"budget alert: {cap.describe(used, agent_name)} ({threshold:.0%} alert threshold)"}
                self.kernel.bus.publish("budget.alert", data, source=SOURCE)
                await self.kernel.audit.record("BudgetAlert", target=f"{cap.scope}:{cap.scope_id or '*'}", detail=data)
                log.warning("%s", data["message"])

    # -- views ----------------------------------------------------------------------------------------
    async def global_status(self) -> dict[str, Any]:
        """``GET /api/budget``: spend, cap and fraction of the cap per window."""
        c = self.config
        spend = await self.store.spend(Windows.at())
        out: dict[str, Any] = {}
        for window, limit in (("hourly", c.max_hourly_usd), ("daily", c.max_daily_usd), ("monthly", c.max_monthly_usd)):
            used = spend.of(window)
            out[f"{window}_spend"] = round(used, 6)
            out[f"{window}_limit"] = limit
            out[f"{window}_pct"] = fraction(used, limit)
        out["alert_threshold"] = c.alert_threshold
        out["default_max_llm_tokens_per_hour"] = c.default_max_llm_tokens_per_hour
        return out

    async def agent_status(self, agent_id: str) -> dict[str, Any]:
        """``GET /api/budget/agents/{id}`` (400 bad id, 404 unknown agent)."""
        record = await self.agent_record(agent_id)
        caps = await self.agent_caps(record.id, record)
        spend = await self.store.spend(Windows.at(), agent_id=record.id)

        def block(used: float, limit: float) -> dict[str, float]:
            return {"spend": round(used, 6), "limit": limit, "pct": fraction(used, limit)}

        tokens_limit = int(caps["max_llm_tokens_per_hour"])
        return {
            "agent_id": record.id, "agent_name": record.name,
            "hourly": block(spend.hourly, caps["max_cost_per_hour_usd"]),
            "daily": block(spend.daily, caps["max_cost_per_day_usd"]),
            "monthly": block(spend.monthly, caps["max_cost_per_month_usd"]),
            "tokens": {"used": spend.tokens_hour, "limit": tokens_limit, "pct": fraction(spend.tokens_hour, tokens_limit)},
        }

    async def provider_rows(self) -> list[dict[str, Any]]:
        """``GET /api/budget/providers``: configured providers and providers seen this month."""
        w = Windows.at()
        seen = await self.store.spend_by("provider", w)
        configured = self.config.providers
        rows = []
        for provider in sorted(set(seen) | set(configured)):
            spend = seen.get(provider, Spend())
            caps = [c for c in self.provider_caps(provider) if c.limit > 0]
            reached = next((c for c in caps if spend.of(c.window) >= c.limit), None)
            budget = configured.get(provider)
            rows.append({
                "provider": provider,
                "cap_hourly_usd": budget.max_cost_per_hour_usd if budget else 0.0,
                "cap_daily_usd": budget.max_cost_per_day_usd if budget else 0.0,
                "cap_monthly_usd": budget.max_cost_per_month_usd if budget else 0.0,
                "cap_tokens_per_hour": budget.max_tokens_per_hour if budget else 0,
                "spend_hourly_usd": round(spend.hourly, 6), "spend_daily_usd": round(spend.daily, 6),
                "spend_monthly_usd": round(spend.monthly, 6), "tokens_this_hour": spend.tokens_hour,
                "is_exhausted": reached is not None,
                "exhaustion_reason": f"{WINDOW_WORDS[reached.window]} cap reached" if reached else None,
                "unconfigured": budget is None,
            })
        return rows

"""Request and response models of the Budget and Usage API (they feed /api/openapi.json)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Usd = Annotated[float, Field(ge=0, le=1_000_000_000, allow_inf_nan=False, strict=True)]
Tokens = Annotated[int, Field(ge=0, le=10**15, strict=True)]
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)]


class DeferredModel(BaseModel):
    """Base of this module's request and response models: pydantic builds each model's validator and
    serializer on first use (``defer_build``), not when the daemon starts and imports this module."""

    model_config = ConfigDict(defer_build=True)


class BudgetUpdate(DeferredModel):
    """Partial update of ``[budget]``. Each cap accepts its canonical name or the GET alias
    (``hourly_limit`` …); the canonical name wins when both are given. Other keys are ignored, so a
    client may PUT back what GET returned."""

    model_config = ConfigDict(extra="ignore")

    max_hourly_usd: Usd | None = None
    hourly_limit: Usd | None = None
    max_daily_usd: Usd | None = None
    daily_limit: Usd | None = None
    max_monthly_usd: Usd | None = None
    monthly_limit: Usd | None = None
    alert_threshold: Ratio | None = None
    default_max_llm_tokens_per_hour: Tokens | None = None


class BudgetStatus(DeferredModel):
    """Global spend per window with its cap; ``*_pct`` is spend / cap (0 when the cap is 0 = unlimited)."""

    hourly_spend: float
    hourly_limit: float
    hourly_pct: float
    daily_spend: float
    daily_limit: float
    daily_pct: float
    monthly_spend: float
    monthly_limit: float
    monthly_pct: float
    alert_threshold: float
    default_max_llm_tokens_per_hour: int


class AgentBudgetUpdate(DeferredModel):
    """Per-agent caps (0 = unlimited); a missing or null field keeps its current value."""

    model_config = ConfigDict(extra="forbid")

    max_cost_per_hour_usd: Usd | None = None
    max_cost_per_day_usd: Usd | None = None
    max_cost_per_month_usd: Usd | None = None
    max_llm_tokens_per_hour: Tokens | None = None


class ProviderBudgetUpdate(DeferredModel):
    """Per-provider caps (0 = unlimited); a missing or null field keeps its current value."""

    model_config = ConfigDict(extra="forbid")

    max_cost_per_hour_usd: Usd | None = None
    max_cost_per_day_usd: Usd | None = None
    max_cost_per_month_usd: Usd | None = None
    max_tokens_per_hour: Tokens | None = None


class Window(DeferredModel):
    spend: float
    limit: float
    pct: float


class TokenWindow(DeferredModel):
    used: int
    limit: int
    pct: float


class AgentBudgetStatus(DeferredModel):
    agent_id: str
    agent_name: str
    hourly: Window
    daily: Window
    monthly: Window
    tokens: TokenWindow


class AgentBudgetRow(DeferredModel):
    agent_id: str
    name: str
    daily_cost_usd: float
    hourly_limit: float
    daily_limit: float
    monthly_limit: float
    max_llm_tokens_per_hour: int


class AgentBudgetRanking(DeferredModel):
    items: list[AgentBudgetRow]
    total: int
    offset: int
    limit: int


class StatusMessage(DeferredModel):
    status: str
    message: str


class ProviderBudgetRow(DeferredModel):
    provider: str
    cap_hourly_usd: float
    cap_daily_usd: float
    cap_monthly_usd: float
    cap_tokens_per_hour: int
    spend_hourly_usd: float
    spend_daily_usd: float
    spend_monthly_usd: float
    tokens_this_hour: int
    is_exhausted: bool
    exhaustion_reason: str | None
    unconfigured: bool


class ProviderBudgets(DeferredModel):
    providers: list[ProviderBudgetRow]
    total: int


class PageQuery(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    offset: int = Field(0, ge=0, le=1_000_000)
    limit: int = Field(100, ge=1, le=1000)


class AgentUsage(DeferredModel):
    agent_id: str
    name: str
    is_hand: bool
    total_tokens: int
    input_tokens: int
    output_tokens: int
    total_cost_usd: float
    cost: float
    call_count: int
    tool_calls: int


class UsagePage(DeferredModel):
    items: list[AgentUsage]
    total: int
    offset: int
    limit: int


class UsageSummary(DeferredModel):
    total_input_tokens: int
    total_output_tokens: int
    total_cost_usd: float
    call_count: int
    total_tool_calls: int


class ModelUsage(DeferredModel):
    model: str
    total_cost_usd: float
    total_input_tokens: int
    total_output_tokens: int
    call_count: int


class ModelPerformance(ModelUsage):
    avg_latency_ms: float
    min_latency_ms: float
    max_latency_ms: float
    cost_per_call: float
    avg_latency_per_call: float


class UsageByModel(DeferredModel):
    models: list[ModelUsage]


class PerformanceByModel(DeferredModel):
    models: list[ModelPerformance]


class Day(DeferredModel):
    date: str
    cost_usd: float
    tokens: int
    calls: int


class UsageDaily(DeferredModel):
    days: list[Day]
    today_cost_usd: float
    first_event_date: str | None

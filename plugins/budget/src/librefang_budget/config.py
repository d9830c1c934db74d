"""``[budget]``: global caps, per-provider caps, the alert threshold and the fallback prices.

A cap of 0 means unlimited; a cap is reached when the spend in its window is at least the cap.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

USD = Annotated[float, Field(ge=0, le=1_000_000_000, allow_inf_nan=False)]
TOKENS = Annotated[int, Field(ge=0, le=10**15)]
PROVIDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_PROVIDERS = 200


class ProviderBudget(BaseModel):
    """``[budget.providers.<id>]``: caps on what one provider may be paid."""

    model_config = ConfigDict(extra="forbid")

    max_cost_per_hour_usd: USD = 0.0
    max_cost_per_day_usd: USD = 0.0
    max_cost_per_month_usd: USD = 0.0
    max_tokens_per_hour: TOKENS = 0


class BudgetConfig(BaseModel):
    """``[budget]`` of config.toml (see docs/security.md, "Budget")."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    max_hourly_usd: USD = Field(0.0, description="Spend cap over the last hour, all agents (0 = unlimited)")
    max_daily_usd: USD = Field(0.0, description="Spend cap since 00:00 UTC, all agents (0 = unlimited)")
    max_monthly_usd: USD = Field(0.0, description="Spend cap since the 1st of the month UTC (0 = unlimited)")
    alert_threshold: float = Field(0.8, ge=0, le=1, allow_inf_nan=False,
                                   description="Share of a cap at which an alert is raised once per period")
    default_max_llm_tokens_per_hour: TOKENS = Field(
        0, description="Tokens per hour for an agent whose manifest sets no max_llm_tokens_per_hour (0 = unlimited)")
    providers: dict[str, ProviderBudget] = Field(default_factory=dict)
    fallback_input_cost_per_m: USD = Field(1.0, description="USD per million input tokens of an unpriced model")
    fallback_output_cost_per_m: USD = Field(3.0, description="USD per million output tokens of an unpriced model")
    retention_days: int = Field(400, ge=32, le=36500, description="Usage records older than this are deleted")

    @field_validator("providers")
    @classmethod
    def _provider_ids(cls, value: dict[str, ProviderBudget]) -> dict[str, ProviderBudget]:
        if len(value) > MAX_PROVIDERS:
            raise ValueError(f"at most {MAX_PROVIDERS} provider budgets")
        for key in value:
            if not PROVIDER_ID.match(key):
                raise ValueError(f"provider id {key[:64]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        return value

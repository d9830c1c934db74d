"""What one LLM call cost: the model catalog's price when it knows the model, else the fallback prices.

The catalog (the providers plugin's ``kernel.services["providers.catalog"]``) bills cache reads and
writes at the model's own cache prices. For a model it does not know, the reference formula applies:
``regular_in = input - cache_read - cache_write`` (never below 0), cache reads at 10 % and cache writes
at 125 % of the input price.
"""

from __future__ import annotations

from typing import Any

CATALOG_SERVICE = "providers.catalog"
PER_MILLION = 1_000_000


def tokens(usage: Any, name: str) -> int:
    """A non-negative token count from a ``Usage`` object or a mapping (0 when absent or bad)."""
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, 0)
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def fallback_cost(usage: Any, input_per_m: float, output_per_m: float) -> float:
    """USD cost of ``usage`` at the fallback prices, with the reference's cache discounts."""
    input_tokens = tokens(usage, "input_tokens")
    cache_read = min(tokens(usage, "cache_read_tokens"), input_tokens)
    cache_write = min(tokens(usage, "cache_write_tokens"), input_tokens - cache_read)
    regular = input_tokens - cache_read - cache_write
    total = (regular * input_per_m + cache_read * input_per_m * 0.10 + cache_write * input_per_m * 1.25
             + tokens(usage, "output_tokens") * output_per_m)
    return round(total / PER_MILLION, 10)


async def call_cost(kernel: Any, provider: str, model: str, usage: Any, config: Any) -> tuple[float, bool]:
    """(USD cost, priced by the catalog). Falls back to ``[budget] fallback_*_cost_per_m`` when the
    catalog is not running or does not know the model (a catalog failure must not lose the record)."""
    catalog = kernel.services.get(CATALOG_SERVICE)
    if catalog is not None:
        try:
            value = await catalog.call_cost(provider, model, usage)
        except Exception:  # noqa: BLE001 - an unreadable catalog: bill at the fallback prices
            value = None
        if value is not None:
            return float(value), True
    return fallback_cost(usage, config.fallback_input_cost_per_m, config.fallback_output_cost_per_m), False

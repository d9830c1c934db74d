"""What other plugins may import from the budget plugin.

Events on ``kernel.bus``: ``budget.alert`` (a scope's spend reached ``alert_threshold`` of a cap;
once per scope, window and period), ``budget.exceeded`` (the first refused call of a period) and
``budget.updated`` (caps changed through the API). Data: ``scope`` (global, provider, agent),
``scope_id``, ``window`` (hourly, daily, monthly, tokens_hour), ``spend``, ``limit``.
"""

from __future__ import annotations

from typing import Any

from librefang_budget.service import BudgetService, Cap
from librefang_budget.store import Spend, Windows

EVENTS = ("budget.alert", "budget.exceeded", "budget.updated")

__all__ = ["EVENTS", "BudgetService", "Cap", "Spend", "Windows", "service"]


def service(kernel: Any) -> BudgetService:
    """The budget service of a started kernel (``KeyError`` when the budget plugin is not running):
    ``await service(kernel).global_status()``, ``.agent_status(agent_id)``, ``.check(call)``."""
    return kernel.services["budget"]

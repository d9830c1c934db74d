"""Config endpoints: redacted view and JSON Schema."""

from __future__ import annotations

from typing import Any

from librefang import current_kernel
from librefang.config import redact
from librefang.routing import Router


def add_routes(router: Router) -> None:
    @router.get("/api/config", cost=2)
    async def get_config() -> dict[str, Any]:
        """The effective configuration with every secret redacted."""
        return redact(current_kernel().config.effective())

    @router.get("/api/config/schema", public=True, cost=1)
    async def get_config_schema() -> dict[str, Any]:
        """JSON Schema of the whole configuration, core keys and every plugin section."""
        return current_kernel().config.json_schema()

"""Wiring of the providers plugin (hooks only)."""

from __future__ import annotations

from typing import Any

from librefang import hookimpl

from librefang_providers import hookspecs  # noqa: F401  (offered to other plugins by the host)
from librefang_providers.api import SERVICE_KEY, get_registry
from librefang_providers.config import ProvidersConfig
from librefang_providers.service import attach_catalog, register_catalog_routes


@hookimpl
def register_config(register: Any) -> None:
    register("providers", ProvidersConfig)


@hookimpl
def register_routes(register: Any) -> None:
    register_catalog_routes(register)


@hookimpl
async def startup(kernel: Any) -> None:
    kernel.services.pop(SERVICE_KEY, None)
    get_registry(kernel)
    await attach_catalog(kernel)


@hookimpl
async def shutdown(kernel: Any) -> None:
    registry = kernel.services.pop(SERVICE_KEY, None)
    if registry is not None:
        await registry.aclose()

"""Hooks this plugin offers to third parties."""

from __future__ import annotations

from typing import Any

from librefang import hookspec


@hookspec
def register_llm_providers(register: Any) -> None:
    """Add LLM provider drivers: ``register("name", factory)``.

    ``factory(config)`` returns an object implementing the driver interface of
    :mod:`librefang_providers.api` (``complete`` and ``stream``). The name is what manifests and
    ``[default_model] provider`` refer to; a name already registered is refused.
    """

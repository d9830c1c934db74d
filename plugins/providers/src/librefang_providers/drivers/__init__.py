"""The built-in drivers, one per wire format, and the providers they serve out of the box.

Every OpenAI-compatible provider (groq, openrouter, deepseek, vllm, lmstudio, ...) is the
``openai`` format with its own base URL and key variable: those facts live in the model catalog,
which hands them to the registry as :class:`~librefang_providers.types.ProviderSpec` entries.

The driver modules (and ``aiohttp``, which their completion calls go over, and ``httpx``, used for
the other calls) are imported on first use, not when the daemon starts: importing them costs more CPU and memory at start-up than the rest of the plugin.
``BUILTIN_FORMATS`` is a mapping that imports a driver's module when its class is looked up, and
:func:`builtin_factory` is what the registry holds until a driver is first built.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any

from librefang_providers.types import DriverConfig, ProviderSpec

# A missing httpx or aiohttp fails the plugin's import, not the first call (find_spec imports neither).
for _package in ("httpx", "aiohttp"):
    if importlib.util.find_spec(_package) is None:  # pragma: no cover - both are declared dependencies
        raise ImportError(f"librefang-providers needs the {_package!r} package (pip install {_package})")

# format -> (module, class): the module is imported when the class is first needed.
_DRIVERS = {
    "openai": ("librefang_providers.drivers.openai", "OpenAIDriver"),
    "anthropic": ("librefang_providers.drivers.anthropic", "AnthropicDriver"),
    "gemini": ("librefang_providers.drivers.gemini", "GeminiDriver"),
    "ollama": ("librefang_providers.drivers.ollama", "OllamaDriver"),
}

# Each driver class's ``default_base_url`` is taken from here, so the specs need no import.
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "ollama": "http://127.0.0.1:11434",
}


def driver_class(fmt: str) -> type:
    """The built-in driver class of wire format ``fmt`` (imports its module); KeyError when unknown."""
    module, attr = _DRIVERS[fmt]
    return getattr(importlib.import_module(module), attr)


class _BuiltinFormats(Mapping[str, type]):
    """``format -> driver class``; a class's module is imported when it is looked up."""

    def __getitem__(self, fmt: str) -> type:
        return driver_class(fmt)

    def __iter__(self) -> Iterator[str]:
        return iter(_DRIVERS)

    def __len__(self) -> int:
        return len(_DRIVERS)


BUILTIN_FORMATS: Mapping[str, type] = _BuiltinFormats()


class builtin_factory:  # noqa: N801  (used like a class: the registry calls it with a DriverConfig)
    """The registry's factory for a built-in format: imports the driver on the first call."""

    __slots__ = ("fmt",)

    def __init__(self, fmt: str) -> None:
        if fmt not in _DRIVERS:
            raise KeyError(fmt)
        self.fmt = fmt

    def __call__(self, config: DriverConfig) -> Any:
        return driver_class(self.fmt)(config)

    def __repr__(self) -> str:
        return f"builtin_factory({self.fmt!r})"


# The providers each native format is named after; everything else comes from the catalog.
BUILTIN_SPECS = {
    "openai": ProviderSpec("openai", DEFAULT_BASE_URLS["openai"], "openai", "OPENAI_API_KEY"),
    "anthropic": ProviderSpec("anthropic", DEFAULT_BASE_URLS["anthropic"], "anthropic", "ANTHROPIC_API_KEY"),
    "gemini": ProviderSpec("gemini", DEFAULT_BASE_URLS["gemini"], "gemini", "GEMINI_API_KEY"),
    "ollama": ProviderSpec("ollama", DEFAULT_BASE_URLS["ollama"], "ollama", "OLLAMA_API_KEY", key_required=False),
}

_CLASS_FORMATS = {attr: fmt for fmt, (_, attr) in _DRIVERS.items()}


def __getattr__(name: str) -> Any:
    """``from librefang_providers.drivers import OpenAIDriver`` still works (imports that driver)."""
    fmt = _CLASS_FORMATS.get(name)
    if fmt is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return driver_class(fmt)


__all__ = ["AnthropicDriver", "BUILTIN_FORMATS", "BUILTIN_SPECS", "DEFAULT_BASE_URLS", "GeminiDriver",
           "OllamaDriver", "OpenAIDriver", "builtin_factory", "driver_class"]

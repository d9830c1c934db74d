"""The built-in drivers, one per wire format, and the providers they serve out of the box.

Every OpenAI-compatible provider (groq, openrouter, deepseek, vllm, lmstudio, ...) is the
``openai`` format with its own base URL and key variable: those facts live in the model catalog,
which hands them to the registry as :class:`~librefang_providers.types.ProviderSpec` entries.
"""

from __future__ import annotations

from librefang_providers.drivers.anthropic import AnthropicDriver
from librefang_providers.drivers.gemini import GeminiDriver
from librefang_providers.drivers.ollama import OllamaDriver
from librefang_providers.drivers.openai import OpenAIDriver
from librefang_providers.types import ProviderSpec

BUILTIN_FORMATS = {
    "openai": OpenAIDriver,
    "anthropic": AnthropicDriver,
    "gemini": GeminiDriver,
    "ollama": OllamaDriver,
}

# The providers each native format is named after; everything else comes from the catalog.
BUILTIN_SPECS = {
    "openai": ProviderSpec("openai", OpenAIDriver.default_base_url, "openai", "OPENAI_API_KEY"),
    "anthropic": ProviderSpec("anthropic", AnthropicDriver.default_base_url, "anthropic", "ANTHROPIC_API_KEY"),
    "gemini": ProviderSpec("gemini", GeminiDriver.default_base_url, "gemini", "GEMINI_API_KEY"),
    "ollama": ProviderSpec("ollama", OllamaDriver.default_base_url, "ollama", "OLLAMA_API_KEY", key_required=False),
}

__all__ = ["AnthropicDriver", "BUILTIN_FORMATS", "BUILTIN_SPECS", "GeminiDriver", "OllamaDriver", "OpenAIDriver"]

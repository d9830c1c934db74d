"""The ``[example]`` section of ``config.toml``."""

from __future__ import annotations

from librefang.config import Section
from pydantic import Field


class ExampleConfig(Section):
    """``[example]``: validated at start; a bad value stops the daemon with ``example.<key>`` named.

    ``Section`` keeps keys this model does not know, so newer config files still load."""

    greeting: str = Field("Hello", min_length=1, max_length=40, description="Word the greeting starts with")
    max_echo_chars: int = Field(1000, ge=1, le=100_000, description="Longest text POST /api/example/echo accepts")

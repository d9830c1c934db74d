"""Backoff policy: exponential delays that honour the provider's ``Retry-After`` hint."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI, Anthropic) or ``Retry-After`` (seconds or an
    HTTP date); ``None`` when absent or unreadable. Negative values count as zero."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_duration(text: str) -> float | None:
    """A protobuf duration such as ``"17s"`` or ``"0.5s"`` (Gemini's ``RetryInfo.retryDelay``)."""
    if isinstance(text, str) and text.endswith("s"):
        try:
            return max(0.0, float(text[:-1]))
        except ValueError:
            return None
    return None


@dataclass(slots=True)
class Backoff:
    """``delay(attempt) = max(retry_after, base * 2**attempt)`` plus up to 10% jitter, capped at
    ``max_delay``. A provider asking for more than ``max_delay`` gets no retry (the caller fails over
    instead of sleeping that long): :meth:`delay` returns ``None``."""

    base: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.1

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None and retry_after > self.max_delay:
            return None
        exponential = self.base * (2**attempt)
        # Jitter spreads out clients that were throttled together; never below the provider's hint.
        wait = max(retry_after or 0.0, exponential * (1.0 + random.random() * self.jitter))
        return min(wait, self.max_delay)

"""Window boundaries (UTC), alert periods, reset times, and the fallback price formula."""

from __future__ import annotations

import datetime as dt

import pytest
from librefang_budget.pricing import fallback_cost
from librefang_budget.store import Windows


def at(text: str) -> Windows:
    return Windows.at(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def test_windows_are_utc_and_calendar_aligned() -> None:
    w = at("2026-03-31T23:30:15")
    assert w.hour == w.now - 3600
    assert dt.datetime.fromtimestamp(w.day, dt.UTC).isoformat() == "2026-03-31T00:00:00+00:00"
    assert dt.datetime.fromtimestamp(w.month, dt.UTC).isoformat() == "2026-03-01T00:00:00+00:00"
    assert w.resets_in("daily") == 29 * 60 + 45 and w.resets_in("monthly") == 29 * 60 + 45
    assert w.resets_in("hourly") is None
    assert (w.period("hourly"), w.period("daily"), w.period("monthly")) == ("2026-03-31T23", "2026-03-31", "2026-03")


def test_early_on_the_first_of_a_month_the_hour_reaches_back_into_the_previous_month() -> None:
    w = at("2026-12-01T00:10:00")
    assert w.earliest == w.hour < w.month == w.day
    assert w.resets_in("monthly") == 31 * 86400 - 600  # to 2027-01-01


@pytest.mark.parametrize(("usage", "expected"), [
    ({"input_tokens": 1_000_000, "output_tokens": 0}, 1.0),
    ({"input_tokens": 0, "output_tokens": 1_000_000}, 3.0),
    ({"input_tokens": 1_000_000, "cache_read_tokens": 1_000_000}, 0.1),
    ({"input_tokens": 1_000_000, "cache_write_tokens": 1_000_000}, 1.25),
    # more cached than input (a provider quirk): never a negative regular share
    ({"input_tokens": 100, "cache_read_tokens": 500, "cache_write_tokens": 500}, 100 * 0.1 / 1_000_000),
    ({"input_tokens": "bad", "output_tokens": -5}, 0.0),
])
def test_fallback_cost(usage: dict[str, object], expected: float) -> None:
    assert fallback_cost(usage, 1.0, 3.0) == pytest.approx(expected)

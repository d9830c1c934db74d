"""Soak (CI variant of bench/soak.py): messages, spawns/kills, SSE and WebSocket connects and
disconnects against a real daemon; RSS growth after warm-up < 10%, open fds and asyncio tasks back
to their post-warm-up baseline, no failed operation.

CI: 30 s. ``LIBREFANG_RELIABILITY_LONG=1``: 10 minutes (the release hour is
``uv run python bench/soak.py --seconds 3600``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.reliability.daemon import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from soak import run_soak, verdict  # noqa: E402

LONG = os.environ.get("LIBREFANG_RELIABILITY_LONG") == "1"
SECONDS = float(os.environ.get("LIBREFANG_SOAK_SECONDS", 600 if LONG else 30))


@pytest.mark.timeout(SECONDS + 180)
def test_soak_memory_fds_and_tasks_stay_bounded(tmp_path: Path) -> None:
    report = run_soak(SECONDS, tmp_path / "home")
    print("soak report " + json.dumps({k: v for k, v in report.items() if k != "failures"}))
    assert not verdict(report), verdict(report)
    # Every kind of traffic ran (a soak that exercised nothing would pass trivially).
    for kind in ("message", "spawn", "kill", "sse_message", "sse_logs_disconnect", "ws_complete",
                 "ws_disconnect_mid_turn"):
        assert report["operations"].get(kind, 0) >= 3, report["operations"]

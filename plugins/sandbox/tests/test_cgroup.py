"""The pids cgroup helper: limits, listing, and a sweep that spares running daemons."""

from __future__ import annotations

import os

import pytest
from librefang_sandbox.cgroup import PREFIX, PidsCgroup, find_pids_root, sweep_stale


def test_sweep_removes_only_the_leftovers_of_dead_daemons():
    root = find_pids_root()
    if root is None:
        pytest.skip("no writable pids cgroup here")
    mine = PidsCgroup.create(root, 5)
    dead = root / f"{PREFIX}999999999-leftover"
    dead.mkdir()
    try:
        assert (mine.path / "pids.max").read_text().strip() == "5"
        assert mine.pids() == [] and mine.current() == 0 and mine.refused() == 0
        assert sweep_stale(root) >= 1
        assert not dead.exists() and mine.path.exists()
        assert mine.path.name.startswith(f"{PREFIX}{os.getpid()}-")
    finally:
        mine.remove()
        if dead.exists():
            dead.rmdir()
    assert not mine.path.exists()

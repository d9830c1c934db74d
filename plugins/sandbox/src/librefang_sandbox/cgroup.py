"""A pids cgroup per command, when the daemon may create one (root, cgroup v1 or v2 with the pids
controller). The kernel then refuses every fork past ``pids.max`` whoever runs the command (root
included), and ``cgroup.procs`` lists every process of the command even after it called ``setsid``
and its parent exited, so the tree kill misses nothing. Without it the sandbox falls back to the
process-count supervision of :mod:`librefang_sandbox.process`.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("librefang.sandbox.cgroup")
PREFIX = "librefang-sandbox-"


def _own_path(controller: str) -> str:
    """This process's cgroup path for ``controller`` (``""`` for the v2 unified hierarchy)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return "/"


def find_pids_root() -> Path | None:
    """A folder under which this process may create pids cgroups, or ``None``."""
    candidates = [Path("/sys/fs/cgroup/pids") / _own_path("pids").lstrip("/")]
    unified = Path("/sys/fs/cgroup")
    try:
        if "pids" in (unified / "cgroup.controllers").read_text().split():
            own = next((ln.split(":", 2)[2] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                        if ln.startswith("0::")), "/")
            candidates.append(unified / own.lstrip("/"))
    except OSError:
        pass
    for root in candidates:
        if not (root / "cgroup.procs").exists():
            continue
        probe = root / f"{PREFIX}probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return root
    return None


@dataclass
class PidsCgroup:
    """One command's pids cgroup."""

    path: Path

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    @classmethod
    def create(cls, root: Path, max_processes: int) -> PidsCgroup:
        """Make a fresh cgroup under ``root`` limited to ``max_processes`` tasks."""
        # The daemon's pid in the name lets a later daemon sweep only the leftovers of dead ones.
        path = root / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir()
        (path / "pids.max").write_text(str(max_processes))
        return cls(path)

    def pids(self) -> list[int]:
        """Every process in the cgroup."""
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def current(self) -> int:
        """Tasks (threads included) counted by the kernel right now."""
        try:
            return int((self.path / "pids.current").read_text())
        except (OSError, ValueError):
            return 0

    def refused(self) -> int:
        """How often a fork was refused because the cgroup was at ``pids.max``."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Delete the cgroup (it must be empty: kill its processes first)."""
        try:
            self.path.rmdir()
        except OSError as exc:
            log.warning("could not remove cgroup %s: %s", self.path, exc)


def _owner_alive(name: str) -> bool:
    owner = name[len(PREFIX):].split("-", 1)[0]
    if not owner.isdigit():
        return False
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path) -> int:
    """Remove empty cgroups left behind by daemons that are gone (start-up); returns how many. The
    cgroups of a daemon still running (another instance, a test) are left alone."""
    removed = 0
    for entry in root.glob(f"{PREFIX}*"):
        if _owner_alive(entry.name):
            continue
        try:
            os.rmdir(entry)
            removed += 1
        except OSError:
            pass
    return removed

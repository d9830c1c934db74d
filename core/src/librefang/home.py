"""The home folder: ``librefang init`` and the daemon file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from librefang.config import CONFIG_TEMPLATE


def init_home(home: Path) -> list[str]:
    """Create the home (0700), a commented ``config.toml`` and ``data/``; returns what was created."""
    created = []
    if not home.exists():
        created.append(str(home))
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    for sub in ("data", "logs", "backups"):
        folder = home / sub
        if not folder.exists():
            folder.mkdir(mode=0o700)
            created.append(str(folder))
    config = home / "config.toml"
    if not config.exists():
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(CONFIG_TEMPLATE)
        created.append(str(config))
    return created


def read_daemon_file(home: Path) -> dict[str, Any] | None:
    """The running daemon's ``daemon.json`` ({pid, url, ...}), or None."""
    try:
        return json.loads((home / "daemon.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie waiting to be reaped."""
    if pid <= 0:
        return False
    try:
        # /proc/<pid>/stat is "pid (comm) STATE ..."; comm may hold spaces, so split after ")".
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state in {"Z", "X"}:
            return False
    except (FileNotFoundError, IndexError, PermissionError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

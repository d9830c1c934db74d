"""File helpers for the core and plugins (part of the public API)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` through a temporary file beside it and a rename.

    Readers never see half a file, and a symlink at ``path`` is replaced, never followed. The
    file is created 0600. ``fsync=True`` makes the content durable before the rename (config files).
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

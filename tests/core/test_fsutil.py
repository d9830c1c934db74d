"""librefang.fsutil.replace_file: whole-file replacement for the core and plugins."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from librefang.fsutil import replace_file


def test_replaces_content_private_and_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    link = tmp_path / "ws" / "note.txt"
    link.parent.mkdir()
    link.symlink_to(outside)
    replace_file(link, b"new", fsync=True)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert outside.read_text() == "keep me"  # the symlink was replaced, its target untouched
    assert stat.S_IMODE(os.stat(link).st_mode) == 0o600
    assert sorted(p.name for p in link.parent.iterdir()) == ["note.txt"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text("old")
    with pytest.raises(TypeError):
        replace_file(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]

"""The audit chain's anchor file: a copy of every entry's hash kept outside the database.

Format (text, one record per line)::

    start <seq> <hash>      where the chain begins: 0 and 64 zeros, or the last entry a
                            retention trim removed
    pending <first> <last>  written before a batch of entries is committed: the seqs it will
                            hold (entries are group-committed; see ``AuditChain.record``)
    <seq> <hash>            one line per committed entry, appended in seq order after the commit

Lines are only ever appended (``O_APPEND``), except by a retention trim, which writes a new file
and renames it over the old one (without the ``pending`` lines). Someone who can rewrite the
database but not this file cannot hide an edit, deletion, insertion or reordering:
``AuditChain.verify`` walks both side by side. The ``pending`` line says which entries a crash
between the commit and the anchor append may have left out, so exactly those (and only if they
chain on) are re-anchored at the next start; an unannounced entry stays a break.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO

_LINE = re.compile(r"^(\d{1,19}) ([0-9a-f]{64})$")
_START = re.compile(r"^start (\d{1,19}) ([0-9a-f]{64})$")
_PENDING = re.compile(r"^pending (\d{1,19}) (\d{1,19})$")
TAIL_BYTES = 4096


class AnchorCorrupt(Exception):
    """The anchor file cannot be parsed."""


def _parse(line: str, number: int) -> tuple[int, str]:
    match = _LINE.match(line)
    if match is None:
        raise AnchorCorrupt(f"line {number} is not '<seq> <sha256>'")
    return int(match.group(1)), match.group(2)


class AnchorReader:
    """Reads an anchor file forwards, one entry at a time (blocking: call from a worker thread)."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle
        self._number = 0
        self._last_seq = -1

    def read_start(self) -> tuple[int, str]:
        """The ``start`` line: (seq, hash) the chain begins after."""
        self._number += 1
        match = _START.match(self._handle.readline().rstrip("\n"))
        if match is None:
            raise AnchorCorrupt("the first line is not 'start <seq> <sha256>'")
        self._last_seq = int(match.group(1))
        return self._last_seq, match.group(2)

    def read_line(self) -> tuple[int, str] | None:
        """The next (seq, hash), or None at the end of the file (``pending`` lines are skipped)."""
        while True:
            raw = self._handle.readline()
            if not raw:
                return None
            if not raw.endswith("\n"):
                return None  # a line still being appended: ignored, it is past the snapshot anyway
            self._number += 1
            if not raw.startswith("pending "):
                break
            if _PENDING.match(raw[:-1]) is None:
                raise AnchorCorrupt(f"line {self._number} is not 'pending <seq> <seq>'")
        seq, digest = _parse(raw[:-1], self._number)
        if seq <= self._last_seq:
            raise AnchorCorrupt(f"line {self._number}: seq {seq} is not increasing")
        self._last_seq = seq
        return seq, digest

    def close(self) -> None:
        self._handle.close()


class AnchorFile:
    """The anchor file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def create(self, start_seq: int, start_hash: str) -> None:
        """Write a new anchor holding only the start line."""
        self._replace_with([f"start {start_seq} {start_hash}\n"])

    def append(self, seq: int, digest: str) -> None:
        """Append one entry's line."""
        self.append_many([(seq, digest)])

    def append_many(self, entries: list[tuple[int, str]]) -> None:
        """Append the lines of committed entries (one ``write`` on an ``O_APPEND`` descriptor)."""
        self._write("".join(f"{seq} {digest}\n" for seq, digest in entries))

    def announce(self, first: int, last: int) -> None:
        """Say that entries ``first``..``last`` are about to be committed (before the commit)."""
        self._write(f"pending {first} {last}\n")

    def _write(self, text: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def last(self) -> tuple[int, str] | None:
        """The last (seq, hash) of the file (the start line when no entry follows it)."""
        return self.tail()[0]

    def tail(self) -> tuple[tuple[int, str] | None, tuple[int, int] | None]:
        """The last (seq, hash), and the (first, last) of a ``pending`` announcement after it."""
        with open(self.path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            lines = handle.read().decode("ascii", "replace").splitlines()
        pending: tuple[int, int] | None = None
        for line in reversed(lines):
            announced = _PENDING.match(line)
            if announced is not None:
                if pending is None:  # the newest announcement is the one a crash may have cut short
                    pending = int(announced.group(1)), int(announced.group(2))
                continue
            match = _START.match(line) or _LINE.match(line)
            if match is not None:
                return (int(match.group(1)), match.group(2)), pending
            if line.strip():
                raise AnchorCorrupt("the last line is not '<seq> <sha256>'")
        return None, pending

    def open_reader(self) -> AnchorReader | None:
        """A reader over the file as it is now, or None when there is no anchor file."""
        try:
            return AnchorReader(open(self.path, encoding="ascii", errors="replace"))  # noqa: SIM115
        except FileNotFoundError:
            return None

    def rewrite_from(self, start_seq: int, start_hash: str) -> None:
        """Start the anchor at ``start_seq`` (retention): keep only the lines after it.

        Streams into a new file renamed over the old one; refuses when the file's own line for
        ``start_seq`` disagrees with ``start_hash``.
        """
        reader = self.open_reader()
        if reader is None:
            raise AnchorCorrupt("the anchor file is missing")
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with self._open_new(tmp) as out:
                out.write(f"start {start_seq} {start_hash}\n")
                reader.read_start()
                while (line := reader.read_line()) is not None:
                    seq, digest = line
                    if seq == start_seq and digest != start_hash:
                        raise AnchorCorrupt(f"seq {seq} differs between the database and the anchor")
                    if seq > start_seq:
                        out.write(f"{seq} {digest}\n")
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            reader.close()
        os.replace(tmp, self.path)

    def _open_new(self, path: Path) -> IO[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        return os.fdopen(fd, "w", encoding="ascii")

    def _replace_with(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._open_new(tmp) as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

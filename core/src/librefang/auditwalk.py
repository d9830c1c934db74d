"""One verification pass over the audit chain (see :meth:`librefang.audit.AuditChain.verify`):
contiguous seqs, every link, every hash, and each entry against the anchor file."""

from __future__ import annotations

import hashlib
from typing import Any

from librefang.auditanchor import AnchorCorrupt, AnchorReader

FIELDS = ("seq", "timestamp", "actor", "action", "target", "detail", "outcome", "request_id")


def entry_hash(entry: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 hex over the tagged fields and ``prev_hash`` (tags stop field-boundary forgery)."""
    digest = hashlib.sha256()
    for name in FIELDS:
        digest.update(f"\x1f{name}={entry[name]}".encode())
    digest.update(f"\x1fprev_hash={prev_hash}".encode())
    return digest.hexdigest()


class Walk:
    """State of one verification pass: the chain so far, the anchor cursor and the first break.

    Runs in a worker thread one batch at a time (hashing and anchor reads are blocking work).
    """

    def __init__(self, start: tuple[int, str], anchor: AnchorReader | None, tip_seq: int) -> None:
        self.prev_seq, self.prev_hash = start
        self.anchor = anchor
        self.tip_seq = tip_seq
        self.count = 0
        self.broken: tuple[int, str] | None = None
        self.anchor_failed = False
        self.anchor_start: tuple[int, str] | None = None
        self._pending: tuple[int, str] | None = None

    def fail(self, seq: int, message: str, *, anchor: bool = False) -> None:
        if anchor:
            self.anchor_failed = True
        if self.broken is None or seq < self.broken[0]:
            self.broken = (seq, message)

    def begin(self) -> None:
        """Read the anchor's start line and compare it with where the database says the chain starts."""
        if self.anchor is None:
            return
        try:
            self.anchor_start = self.anchor.read_start()
        except AnchorCorrupt as exc:
            self.anchor = None
            self.fail(self.prev_seq + 1, f"anchor file is corrupt: {exc}", anchor=True)
            return
        anchor_seq, anchor_hash = self.anchor_start
        if self.prev_seq > anchor_seq:
            self.fail(anchor_seq + 1, f"chain break at seq {anchor_seq + 1}: entries up to seq {self.prev_seq}"
                      " were removed from the database without an anchored retention trim", anchor=True)
        elif self.prev_seq == anchor_seq and self.prev_hash != anchor_hash:
            self.fail(anchor_seq + 1, f"chain break at seq {anchor_seq + 1}: the chain start differs from the"
                      " anchor file", anchor=True)

    def _next_anchor(self) -> tuple[int, str] | None:
        if self._pending is not None:
            line, self._pending = self._pending, None
            return line
        if self.anchor is None:
            return None
        try:
            return self.anchor.read_line()
        except AnchorCorrupt as exc:
            self.anchor = None
            self.fail(self.prev_seq, f"anchor file is corrupt: {exc}", anchor=True)
            return None

    def _check_anchor(self, seq: int, digest: str) -> None:
        if self.anchor_start is None:
            return
        start_seq, start_hash = self.anchor_start
        if seq <= start_seq:  # a retention trim anchored but not yet applied to the database
            if seq == start_seq and digest != start_hash:
                self.fail(seq, f"chain break at seq {seq}: hash differs from the anchor file", anchor=True)
            return
        line = self._next_anchor()
        while line is not None and line[0] < seq:
            self.fail(line[0], f"chain break at seq {line[0]}: anchored entry is missing from the database",
                      anchor=True)
            line = self._next_anchor()
        if line is None or line[0] > seq:
            self._pending = line
            self.fail(seq, f"chain break at seq {seq}: entry is not in the anchor file (inserted?)", anchor=True)
        elif line[1] != digest:
            self.fail(seq, f"chain break at seq {seq}: hash differs from the anchor file (rewritten)", anchor=True)

    def process(self, rows: list[dict[str, Any]]) -> None:
        """Check one batch of entries, in seq order."""
        for entry in rows:
            self.count += 1
            seq = int(entry["seq"])
            if seq != self.prev_seq + 1:
                self.fail(self.prev_seq + 1, f"chain break at seq {self.prev_seq + 1}: next entry has seq {seq}")
            elif entry["prev_hash"] != self.prev_hash:
                self.fail(seq, f"chain break at seq {seq}: prev_hash does not match the previous entry")
            elif entry_hash(entry, self.prev_hash) != entry["hash"]:
                self.fail(seq, f"chain break at seq {seq}: entry content does not match its hash")
            self._check_anchor(seq, entry["hash"])
            self.prev_seq, self.prev_hash = seq, entry["hash"]

    def finish(self) -> None:
        """Anchored entries the database no longer holds (a deleted tail)."""
        if self.anchor_start is None:
            return
        line = self._next_anchor()
        if line is not None and line[0] <= self.tip_seq:
            self.fail(line[0], f"chain break at seq {line[0]}: anchored entry is missing from the database",
                      anchor=True)

"""Append-only, hash-chained audit log stored in the database, with an external anchor file.

Each entry's ``hash`` is SHA-256 over its tagged fields and the previous entry's hash; the first
``prev_hash`` is 64 zeros. The tip (seq and hash) is also written to an anchor file so that a
rewritten tail is detected. Retention trims old entries and records where the chain now starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from librefang.storage import Database

GENESIS = "0" * 64
FIELDS = ("seq", "timestamp", "actor", "action", "target", "detail", "outcome", "request_id")
MAX_DETAIL_CHARS = 4000


def entry_hash(entry: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 hex over the tagged fields and ``prev_hash`` (tags stop field-boundary forgery)."""
    digest = hashlib.sha256()
    for name in FIELDS:
        digest.update(f"\x1f{name}={entry[name]}".encode())
    digest.update(f"\x1fprev_hash={prev_hash}".encode())
    return digest.hexdigest()


@dataclass
class VerifyResult:
    valid: bool
    entries: int
    tip_hash: str
    anchor_status: str
    first_broken_seq: int | None = None
    error: str | None = None

    def to_dict(self, anchor_path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {
            "valid": self.valid,
            "entries": self.entries,
            "tip_hash": self.tip_hash,
            "anchor_enabled": True,
            "anchor_path": str(anchor_path),
            "anchor_status": self.anchor_status,
        }
        if not self.valid:
            out["first_broken_seq"] = self.first_broken_seq
            out["error"] = self.error
        return out


class AuditChain:
    """The kernel's audit log. ``record`` appends; ``verify`` walks the whole chain."""

    def __init__(self, db: Database, anchor_path: Path) -> None:
        self.db = db
        self.anchor_path = anchor_path
        self._lock = asyncio.Lock()
        self._tip_seq = 0
        self._tip_hash = GENESIS
        self.last_verify: dict[str, Any] | None = None

    async def open(self) -> None:
        """Load the tip from the database."""
        async with self.db.begin() as conn:
            row = (
                await conn.execute(text("SELECT seq, hash FROM core_audit_entries ORDER BY seq DESC LIMIT 1"))
            ).first()
            if row is None:
                start = await self._chain_start(conn)
                self._tip_seq, self._tip_hash = start
            else:
                self._tip_seq, self._tip_hash = int(row[0]), row[1]

    @staticmethod
    async def _chain_start(conn: Any) -> tuple[int, str]:
        """(seq before the first kept entry, its hash): genesis unless retention trimmed."""
        rows = (await conn.execute(text("SELECT name, value FROM core_audit_meta"))).all()
        meta = {r[0]: r[1] for r in rows}
        return int(meta.get("trimmed_seq", 0)), meta.get("trimmed_hash", GENESIS)

    @property
    def length(self) -> int:
        return self._tip_seq

    @property
    def tip_hash(self) -> str:
        return self._tip_hash

    async def record(
        self,
        action: str,
        *,
        actor: str = "system",
        target: str = "",
        detail: Any = "",
        outcome: str = "ok",
        request_id: str = "",
    ) -> dict[str, Any]:
        """Append an entry and return it. ``detail`` may be a string or a JSON-able value."""
        if not isinstance(detail, str):
            detail = json.dumps(detail, sort_keys=True, default=str)
        entry = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "actor": actor[:200],
            "action": action[:100],
            "target": target[:500],
            "detail": detail[:MAX_DETAIL_CHARS],
            "outcome": outcome[:50],
            "request_id": request_id[:64],
        }
        async with self._lock:
            entry["seq"] = self._tip_seq + 1
            entry["prev_hash"] = self._tip_hash
            entry["hash"] = entry_hash(entry, self._tip_hash)
            async with self.db.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO core_audit_entries (seq, timestamp, actor, action, target, detail, outcome,"
                        " request_id, prev_hash, hash) VALUES (:seq, :timestamp, :actor, :action, :target,"
                        " :detail, :outcome, :request_id, :prev_hash, :hash)"
                    ),
                    entry,
                )
            self._tip_seq, self._tip_hash = entry["seq"], entry["hash"]
            self._write_anchor(entry["seq"], entry["hash"])
        return entry

    def _write_anchor(self, seq: int, digest: str) -> None:
        self.anchor_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.anchor_path.with_suffix(".tmp")
        tmp.write_text(f"{seq} {digest}\n")
        os.replace(tmp, self.anchor_path)

    def _read_anchor(self) -> tuple[int, str] | None:
        try:
            seq, digest = self.anchor_path.read_text().split()
            return int(seq), digest
        except (FileNotFoundError, ValueError):
            return None

    async def recent(self, limit: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Newest first, with the total count."""
        async with self.db.begin() as conn:
            total = (await conn.execute(text("SELECT COUNT(*) FROM core_audit_entries"))).scalar_one()
            rows = (
                await conn.execute(
                    text(
                        "SELECT seq, timestamp, actor, action, target, detail, outcome, request_id, prev_hash, hash"
                        " FROM core_audit_entries ORDER BY seq DESC LIMIT :limit OFFSET :offset"
                    ),
                    {"limit": limit, "offset": offset},
                )
            ).mappings().all()
        return [dict(r) for r in rows], int(total)

    async def verify(self) -> VerifyResult:
        """Walk the chain: every link, every hash, contiguous seqs, and the anchor."""
        async with self.db.begin() as conn:
            prev_seq, prev_hash = await self._chain_start(conn)
            result = await conn.stream(
                text(
                    "SELECT seq, timestamp, actor, action, target, detail, outcome, request_id, prev_hash, hash"
                    " FROM core_audit_entries ORDER BY seq"
                )
            )
            count = 0
            hashes: dict[int, str] = {}
            broken: tuple[int, str] | None = None
            async for row in result.mappings():
                entry = dict(row)
                count += 1
                seq = int(entry["seq"])
                if broken is None:
                    if seq != prev_seq + 1:
                        broken = (prev_seq + 1, f"chain break at seq {prev_seq + 1}: next entry has seq {seq}")
                    elif entry["prev_hash"] != prev_hash:
                        broken = (seq, f"chain break at seq {seq}: prev_hash does not match the previous entry")
                    elif entry_hash(entry, prev_hash) != entry["hash"]:
                        broken = (seq, f"chain break at seq {seq}: entry content does not match its hash")
                prev_seq, prev_hash = seq, entry["hash"]
                hashes[seq] = entry["hash"]
        anchor = self._read_anchor()
        anchor_status = "none"
        if anchor is not None:
            anchor_seq, anchor_hash = anchor
            if hashes.get(anchor_seq) == anchor_hash and anchor_seq == prev_seq:
                anchor_status = "ok"
            elif hashes.get(anchor_seq) == anchor_hash:
                anchor_status = "behind"  # a crash between commit and anchor write; tail still chained
            else:
                anchor_status = "mismatch"
                if broken is None:
                    broken = (anchor_seq, f"anchor mismatch: entry seq {anchor_seq} differs from the anchor file")
        elif count:
            anchor_status = "missing"
        verdict = VerifyResult(
            valid=broken is None,
            entries=count,
            tip_hash=prev_hash,
            anchor_status=anchor_status,
            first_broken_seq=broken[0] if broken else None,
            error=broken[1] if broken else None,
        )
        self.last_verify = {"valid": verdict.valid, "entries": count, "at": dt.datetime.now(dt.UTC).isoformat()}
        return verdict

    async def trim(self, retention_days: int) -> int:
        """Delete entries older than ``retention_days`` (0 keeps all); the chain stays verifiable."""
        if retention_days <= 0:
            return 0
        cutoff = (dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)).isoformat(timespec="microseconds")
        async with self._lock, self.db.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT seq, hash FROM core_audit_entries WHERE timestamp < :cutoff AND seq < :tip"
                        " ORDER BY seq DESC LIMIT 1"
                    ),
                    {"cutoff": cutoff, "tip": self._tip_seq},
                )
            ).first()
            if row is None:
                return 0
            last_seq, last_hash = int(row[0]), row[1]
            deleted = await conn.execute(text("DELETE FROM core_audit_entries WHERE seq <= :s"), {"s": last_seq})
            for name, value in (("trimmed_seq", str(last_seq)), ("trimmed_hash", last_hash)):
                await conn.execute(text("DELETE FROM core_audit_meta WHERE name = :n"), {"n": name})
                await conn.execute(text("INSERT INTO core_audit_meta (name, value) VALUES (:n, :v)"), {"n": name, "v": value})
            return int(deleted.rowcount or 0)

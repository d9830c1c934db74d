"""Append-only, hash-chained audit log stored in the database, with an external anchor file.

Each entry's ``hash`` is SHA-256 over its tagged fields and the previous entry's hash; the first
``prev_hash`` is 64 zeros. Every committed entry's ``seq hash`` is also appended to an anchor file
outside the database (:mod:`librefang.auditanchor`), so an edited, deleted, inserted, reordered or
wholesale rewritten run of rows is detected, and the first broken ``seq`` is named exactly.

Entries recorded concurrently are group-committed: one writer task takes every pending entry (up
to ``MAX_BATCH``), gives them consecutive seqs in arrival order, chains their hashes, announces the
batch in the anchor file, inserts them in ONE transaction (one hop to the database thread, see
``Database.run``), and only after the commit appends their anchor lines and answers each caller.
So seq order is chain order, and no caller is told its entry is stored before it is.

The verification walk itself (and ``entry_hash``) lives in :mod:`librefang.auditwalk`.

Retention trims old entries: the anchor file is rewritten first to start at the last trimmed
entry, then the rows are deleted and the database records where the chain now starts, so the
remaining chain still verifies end to end.

Multi-process note: one process appends at a time. ``seq`` is the primary key, so a second writer
racing on the same database fails its insert instead of forking the chain, but a shared anchor and
a shared append lock (PostgreSQL advisory lock) are needed before several daemons share one chain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from librefang.auditanchor import AnchorCorrupt, AnchorFile, AnchorReader
from librefang.auditwalk import FIELDS, Walk, entry_hash  # noqa: F401 - FIELDS, entry_hash: this module's API too
from librefang.storage import Database

log = logging.getLogger("librefang.audit")

GENESIS = "0" * 64
COLUMNS = "seq, timestamp, actor, action, target, detail, outcome, request_id, prev_hash, hash"
MAX_DETAIL_CHARS = 4000
VERIFY_BATCH = 1000
# Entries written in one transaction at most (a burst larger than this takes several).
MAX_BATCH = 256
_INSERT = text(
    f"INSERT INTO core_audit_entries ({COLUMNS}) VALUES (:seq, :timestamp, :actor, :action,"
    " :target, :detail, :outcome, :request_id, :prev_hash, :hash)"
)
RETENTION_INTERVAL_SECS = 3600.0


_Pending = tuple[dict[str, Any], Callable[[Any], Any] | None, "asyncio.Future[tuple[dict[str, Any], Any]]"]


def _commit_batch(conn: Any, changes: list[Callable[[Any], Any] | None], rows: list[dict[str, Any]]) -> list[Any]:
    """One transaction: the callers' changes, then their entries (runs in the database thread)."""
    results = [change(conn) if change is not None else None for change in changes]
    conn.execute(_INSERT, rows)
    return results


def _entry(action: str, actor: str, target: str, detail: Any, outcome: str, request_id: str) -> dict[str, Any]:
    """The caller's fields of an entry, bounded and with credential-shaped substrings scrubbed."""
    from librefang.logs import scrub

    if not isinstance(detail, str):
        detail = json.dumps(detail, sort_keys=True, default=str)
    return {
        "actor": str(actor)[:200],
        "action": str(action)[:100],
        "target": scrub(str(target))[:500],
        "detail": scrub(detail)[:MAX_DETAIL_CHARS],
        "outcome": str(outcome)[:50],
        "request_id": str(request_id or "")[:64],
    }


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_timestamp(moment: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds; one fixed format so text order is time order."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


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

    def __init__(self, db: Database, anchor_path: Path, *, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.db = db
        self.anchor_path = anchor_path
        self.anchor = AnchorFile(anchor_path)
        self.clock = clock  # injectable so tests can write entries dated in the past
        self._lock = asyncio.Lock()
        self._tip_seq = 0
        self._tip_hash = GENESIS
        self._entries = 0
        self.last_verify: dict[str, Any] | None = None
        self.last_trim: dict[str, Any] | None = None
        self._verifying: asyncio.Future[VerifyResult] | None = None
        # Entries waiting for the writer task, each with the future its caller awaits.
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Load the tip, create the anchor for a new chain, and re-anchor entries a crash left out."""
        async with self.db.begin() as conn:
            start = await self._chain_start(conn)
            tip = (await conn.execute(text(f"SELECT {COLUMNS} FROM core_audit_entries ORDER BY seq DESC LIMIT 1"))
                   ).mappings().first()
            self._entries = int((await conn.execute(text("SELECT COUNT(*) FROM core_audit_entries"))).scalar_one())
        self._tip_seq, self._tip_hash = (int(tip["seq"]), tip["hash"]) if tip else start
        await self._reconcile_anchor(start, int(tip["seq"]) if tip else None)

    async def _reconcile_anchor(self, start: tuple[int, str], tip_seq: int | None) -> None:
        if not await asyncio.to_thread(self.anchor.exists):
            if tip_seq is None:
                await asyncio.to_thread(self.anchor.create, *start)
            else:
                log.error("audit anchor %s is missing; /api/audit/verify will report the chain as unanchored",
                          self.anchor_path)
            return
        try:
            last, pending = await asyncio.to_thread(self.anchor.tail)
        except AnchorCorrupt as exc:
            log.error("audit anchor %s is corrupt: %s", self.anchor_path, exc)
            return
        # A batch is announced in the anchor, committed, then anchored: a crash between the last two
        # leaves the database ahead by (part of) the announced batch. Exactly the announced entries
        # that chain on from the anchored tip are re-anchored; anything else stays for verify to report.
        if tip_seq is None or last is None or pending is None or tip_seq <= last[0] or pending[0] != last[0] + 1:
            return
        async with self.db.begin() as conn:
            rows = (await conn.execute(
                text(f"SELECT {COLUMNS} FROM core_audit_entries WHERE seq > :after AND seq <= :through ORDER BY seq"),
                {"after": last[0], "through": min(tip_seq, pending[1])},
            )).mappings().all()
        seq, prev, found = last[0], last[1], []
        for row in rows:
            if int(row["seq"]) != seq + 1 or row["prev_hash"] != prev or entry_hash(row, prev) != row["hash"]:
                break
            seq, prev = int(row["seq"]), row["hash"]
            found.append((seq, prev))
        if found:
            await asyncio.to_thread(self.anchor.append_many, found)
            log.warning("audit anchor was behind (interrupted write); re-anchored seq %s..%s", found[0][0], seq)

    @staticmethod
    async def _chain_start(conn: Any) -> tuple[int, str]:
        """(seq before the first kept entry, its hash): genesis unless retention trimmed."""
        rows = (await conn.execute(text("SELECT name, value FROM core_audit_meta"))).all()
        meta = {r[0]: r[1] for r in rows}
        return int(meta.get("trimmed_seq", 0)), meta.get("trimmed_hash", GENESIS)

    @property
    def length(self) -> int:
        """Entries currently held (after retention trims)."""
        return self._entries

    @property
    def tip_seq(self) -> int:
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
        """Append an entry and return it. ``detail`` may be a string or a JSON-able value.

        Credential-shaped substrings in ``target`` and ``detail`` are scrubbed before hashing.
        """
        entry = _entry(action, actor, target, detail, outcome, request_id)
        return (await self._submit(entry, None))[0]

    async def record_with(
        self,
        change: Callable[[Any], Any],
        action: str,
        *,
        actor: str = "system",
        target: str = "",
        detail: Any = "",
        outcome: str = "ok",
        request_id: str = "",
    ) -> tuple[dict[str, Any], Any]:
        """Commit ``change(conn)`` and its audit entry in ONE transaction; returns (entry, its result).

        ``change`` is a plain function given a sync SQLAlchemy connection, with the rules of
        :meth:`Database.run` (it runs in the database thread with SQLite: short, no event-loop
        calls). The change is stored if and only if its entry is. Concurrent calls share one
        transaction; when that transaction fails, each is retried alone, so a change that raises
        (a unique key taken, say) fails only its own caller, with its own exception.
        """
        entry = _entry(action, actor, target, detail, outcome, request_id)
        return await self._submit(entry, change)

    async def _submit(self, entry: dict[str, Any], change: Callable[[Any], Any] | None) -> tuple[dict[str, Any], Any]:
        done: asyncio.Future[tuple[dict[str, Any], Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, change, done))
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not asyncio.get_running_loop():
            self._writer = asyncio.ensure_future(self._drain())
        # Shielded: a caller that goes away does not stop its entry (it is written all the same).
        return await asyncio.shield(done)

    async def _drain(self) -> None:
        """The writer task: write batches while entries are pending, each under the chain's lock."""
        while self._pending:
            async with self._lock:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    await self._write(batch)
                except BaseException as exc:  # answer every caller, whatever happened
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise

    async def _write(self, batch: list[_Pending]) -> None:
        """Chain, announce, commit (one transaction), anchor, answer; the tip moves only after the commit.

        A failed transaction of several entries is retried one entry at a time, so one caller's
        failing change does not fail the others.
        """
        seq, prev = self._tip_seq, self._tip_hash
        rows = []
        for entry, _, _ in batch:
            seq += 1
            entry["timestamp"] = format_timestamp(self.clock())
            entry["seq"] = seq
            entry["prev_hash"] = prev
            entry["hash"] = prev = entry_hash(entry, prev)
            rows.append(entry)
        try:
            self.anchor.announce(self._tip_seq + 1, seq)
        except OSError as exc:  # stored all the same; only a crash before the anchor append would show
            log.error("could not write the audit anchor %s: %s", self.anchor_path, exc)
        changes = [change for _, change, _ in batch]
        try:
            results = await self.db.run(_commit_batch, changes, rows)
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    await self._write([item])
            elif not batch[0][2].done():
                batch[0][2].set_exception(exc)
            return
        self._tip_seq, self._tip_hash = seq, prev
        self._entries += len(rows)
        try:
            self.anchor.append_many([(row["seq"], row["hash"]) for row in rows])
        except OSError as exc:  # the entries are stored; verify will show them as unanchored
            log.error("could not write the audit anchor %s: %s", self.anchor_path, exc)
        for (entry, _, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result((entry, result))

    async def recent(self, limit: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Newest first, with the total count."""
        async with self.db.begin() as conn:
            total = (await conn.execute(text("SELECT COUNT(*) FROM core_audit_entries"))).scalar_one()
            rows = (
                await conn.execute(
                    text(f"SELECT {COLUMNS} FROM core_audit_entries ORDER BY seq DESC LIMIT :limit OFFSET :offset"),
                    {"limit": limit, "offset": offset},
                )
            ).mappings().all()
        return [dict(r) for r in rows], int(total)

    async def verify(self) -> VerifyResult:
        """Walk the chain: contiguous seqs, every link, every hash, and each entry against the anchor.

        Concurrent callers share one walk (it costs a hash per entry), and a caller that goes away
        does not cancel it for the others.
        """
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.ensure_future(self._verify())
        return await asyncio.shield(self._verifying)

    async def _verify(self, through: int | None = None) -> VerifyResult:
        """The walk; with ``through``, only the entries up to that seq (a retention trim's check)."""
        reader: AnchorReader | None = None
        async with self.db.begin() as conn:
            # Snapshot under the lock: the rows, the chain start and the anchor file are taken at one
            # point, so appends and trims running meanwhile are not mistaken for tampering.
            async with self._lock:
                start = await self._chain_start(conn)
                tip_seq = self._tip_seq if through is None else through
                # Every row, not only those up to our tip: under the lock no legitimate entry lies
                # beyond it, so a row there was written behind the daemon's back.
                result = await conn.stream(
                    text(f"SELECT {COLUMNS} FROM core_audit_entries WHERE seq <= :through ORDER BY seq"),
                    {"through": through if through is not None else 2**62},
                )
                reader = await asyncio.to_thread(self.anchor.open_reader)
            try:
                walk = Walk(start, reader, tip_seq)
                await asyncio.to_thread(walk.begin)
                mapped = result.mappings()
                while True:
                    rows = [dict(r) for r in await mapped.fetchmany(VERIFY_BATCH)]
                    if not rows:
                        break
                    await asyncio.to_thread(walk.process, rows)
                await asyncio.to_thread(walk.finish)
            finally:
                if reader is not None:
                    reader.close()
                await result.close()
        if reader is None:
            anchor_status = "missing" if walk.count else "none"
            if walk.count:
                walk.fail(start[0] + 1, "anchor file is missing: the chain cannot be checked against it")
        else:
            anchor_status = "mismatch" if walk.anchor_failed else "ok"
        broken = walk.broken
        verdict = VerifyResult(
            valid=broken is None,
            entries=walk.count,
            tip_hash=walk.prev_hash,
            anchor_status=anchor_status,
            first_broken_seq=broken[0] if broken else None,
            error=broken[1] if broken else None,
        )
        if through is not None:
            return verdict
        self.last_verify = {
            "valid": verdict.valid, "entries": walk.count, "first_broken_seq": verdict.first_broken_seq,
            "at": format_timestamp(utc_now()),
        }
        return verdict

    async def trim(self, retention_days: int) -> int:
        """Delete entries older than ``retention_days`` (0 keeps all); the chain stays verifiable.

        Refuses to trim a chain that does not verify, so tampering is never laundered away.
        Records a ``RetentionTrim`` entry when something was deleted; returns how many.
        """
        if retention_days <= 0:
            return 0
        cutoff = format_timestamp(self.clock() - dt.timedelta(days=retention_days))
        expired = await self._last_expired(cutoff)
        if expired is None:
            return 0
        # Only what is about to go must verify (the rest stays, for any later verify to judge):
        # the cost of a trim follows what it removes, not the length of the chain.
        verdict = await self._verify(through=expired[0])
        if not verdict.valid:
            log.error("audit retention skipped: the chain does not verify (%s)", verdict.error)
            self.last_trim = {"deleted": 0, "refused": verdict.error, "at": format_timestamp(utc_now())}
            return 0
        async with self._lock:
            last = await self._last_expired(cutoff)
            if last is None:  # trimmed meanwhile by another caller
                return 0
            if last[0] > expired[0]:  # only what was verified may go
                last = expired
            last_seq, last_hash = last
            # Anchor first: if the process dies before the rows go, the anchor's start simply points
            # into rows that are still present, which verifies; the next trim finishes the job.
            await asyncio.to_thread(self.anchor.rewrite_from, last_seq, last_hash)
            async with self.db.begin() as conn:
                deleted = await conn.execute(text("DELETE FROM core_audit_entries WHERE seq <= :s"), {"s": last_seq})
                for name, value in (("trimmed_seq", str(last_seq)), ("trimmed_hash", last_hash)):
                    await conn.execute(text("DELETE FROM core_audit_meta WHERE name = :n"), {"n": name})
                    await conn.execute(
                        text("INSERT INTO core_audit_meta (name, value) VALUES (:n, :v)"), {"n": name, "v": value}
                    )
                count = int(deleted.rowcount or 0)
            self._entries = max(0, self._entries - count)
        self.last_trim = {"deleted": count, "through_seq": last_seq, "at": format_timestamp(utc_now())}
        await self.record(
            "RetentionTrim", detail={"deleted": count, "through_seq": last_seq, "retention_days": retention_days}
        )
        return count

    async def _last_expired(self, cutoff: str) -> tuple[int, str] | None:
        """(seq, hash) of the newest entry older than ``cutoff``; the tip itself is always kept."""
        async with self.db.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT seq, hash FROM core_audit_entries WHERE timestamp < :cutoff AND seq < :tip"
                        " ORDER BY seq DESC LIMIT 1"
                    ),
                    {"cutoff": cutoff, "tip": self._tip_seq},
                )
            ).first()
        return (int(row[0]), row[1]) if row is not None else None

    async def run_retention(self, retention_days: Callable[[], int],
                            interval: float = RETENTION_INTERVAL_SECS) -> None:
        """Trim at once, then every ``interval`` seconds, for as long as the kernel runs."""
        while True:
            try:
                await self.trim(retention_days())
            except Exception:  # a failed trim is retried on the next round
                log.exception("audit retention trim failed")
            await asyncio.sleep(interval)

"""The operator's TOTP enrollment: setup, confirm, status, revoke, and code checks with replay
refusal, single-use recovery codes and a lockout after repeated failures.

The secret lives in the kernel vault (``approvals.totp.secret``; an unconfirmed one under
``approvals.totp.pending``); the database holds the enrollment state, the highest time step
accepted (a code of that step or an earlier one is a replay), salted hashes of the recovery codes
and the failure counters. Code checks run one at a time per process (an asyncio lock), so a burst
of guesses meets the lockout after exactly ``totp_max_failures`` of them; the step and the
recovery codes are consumed by conditional updates, so two processes cannot both accept one code.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from librefang.errors import ApiError, BadRequest, Conflict, TooManyRequests

from librefang_approvals import totp
from librefang_approvals.config import ApprovalConfig
from librefang_approvals.models import lockouts, recovery
from librefang_approvals.models import totp as totp_table

VAULT_SECRET = "approvals.totp.secret"
VAULT_PENDING = "approvals.totp.pending"
ROW = "operator"
RECOVERY_CODES = 8
PENDING_TTL_SECS = 600.0  # an unconfirmed setup expires, so a lost QR code does not block re-enrollment
MAX_CODE_CHARS = 64
BUCKETS = ("approve", "confirm", "setup", "revoke")


@dataclass
class Setup:
    """What ``setup`` returns once: the only time the secret and the recovery codes are shown."""

    otpauth_uri: str
    secret: str
    qr_code: str
    recovery_codes: list[str]


class TotpStore:
    """TOTP second factor of one kernel."""

    def __init__(self, kernel: Any, config: Callable[[], ApprovalConfig], clock: Callable[[], float] = time.time) -> None:
        self.kernel = kernel
        self.config = config
        self.clock = clock  # injectable: tests step through RFC 6238 time steps
        self._lock = asyncio.Lock()

    # -- vault (blocking file I/O: off the event loop) -------------------------------------------
    async def _vault_get(self, name: str) -> str | None:
        return await asyncio.to_thread(self.kernel.vault.get, name)

    async def _vault_set(self, name: str, value: str) -> None:
        await asyncio.to_thread(self.kernel.vault.set, name, value)

    async def _vault_delete(self, name: str) -> None:
        await asyncio.to_thread(self.kernel.vault.delete, name)

    # -- state ------------------------------------------------------------------------------------
    async def _row(self) -> dict[str, Any] | None:
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(totp_table).where(totp_table.c.id == ROW))).mappings().first()
        return dict(row) if row else None

    def _pending_live(self, row: dict[str, Any] | None) -> bool:
        return bool(row and row["pending_since"] is not None
                    and self.clock() - row["pending_since"] < PENDING_TTL_SECS)

    async def confirmed(self) -> bool:
        """Whether a confirmed enrollment exists."""
        row = await self._row()
        return bool(row and row["confirmed"])

    async def status(self) -> dict[str, Any]:
        """``{enrolled, confirmed, enforced, scope, remaining_recovery_codes, pending_confirmation}``."""
        row = await self._row()
        config = self.config()
        async with self.kernel.db.begin() as conn:
            remaining = (await conn.execute(
                sa.select(sa.func.count()).select_from(recovery)
                .where(recovery.c.state == "active", recovery.c.used_at.is_(None)))).scalar_one()
            locks = (await conn.execute(sa.select(lockouts).where(lockouts.c.locked_until > self.clock()))).mappings().all()
        confirmed = bool(row and row["confirmed"])
        return {
            "enrolled": confirmed or self._pending_live(row),
            "confirmed": confirmed,
            "enforced": config.second_factor == "totp",
            "scope": (config.totp_tools or ["*"]) if config.second_factor == "totp" else [],
            "remaining_recovery_codes": int(remaining) if confirmed else 0,
            "pending_confirmation": self._pending_live(row),
            "locked": {r["bucket"]: round(r["locked_until"] - self.clock(), 1) for r in locks},
        }

    # -- lockout ------------------------------------------------------------------------------------
    async def _check_lock(self, bucket: str) -> None:
        async with self.kernel.db.begin() as conn:
            until = (await conn.execute(sa.select(lockouts.c.locked_until).where(lockouts.c.bucket == bucket))).scalar()
        remaining = (until or 0.0) - self.clock()
        if remaining > 0:
            raise TooManyRequests(f"too many wrong codes: TOTP checks for {bucket} are locked for {int(remaining) + 1} s",
                                  code="totp_locked", headers={"Retry-After": str(int(remaining) + 1)})

    async def _fail(self, bucket: str, why: str) -> ApiError:
        config = self.config()
        async with self.kernel.db.begin() as conn:
            row = (await conn.execute(sa.select(lockouts).where(lockouts.c.bucket == bucket))).mappings().first()
            failures = (row["failures"] if row else 0) + 1
            locked_until = 0.0
            if failures >= config.totp_max_failures:
                locked_until, failures = self.clock() + config.totp_lockout_secs, 0
            if row:
                await conn.execute(sa.update(lockouts).where(lockouts.c.bucket == bucket)
                                   .values(failures=failures, locked_until=locked_until))
            else:
                await conn.execute(sa.insert(lockouts).values(bucket=bucket, failures=failures, locked_until=locked_until))
        locked = locked_until > 0
        await self.kernel.audit.record("TotpFailed", target=bucket, detail={"reason": why, "locked": locked},
                                       outcome="locked" if locked else "failed")
        if locked:
            return TooManyRequests(f"{why}; too many wrong codes: locked for {config.totp_lockout_secs} s",
                                   code="totp_locked", headers={"Retry-After": str(config.totp_lockout_secs)})
        return BadRequest(why, code="invalid_totp_code")

    async def _succeed(self, bucket: str) -> None:
        async with self.kernel.db.begin() as conn:
            await conn.execute(sa.update(lockouts).where(lockouts.c.bucket == bucket).values(failures=0))

    # -- checks ---------------------------------------------------------------------------------------
    async def _consume_step(self, secret: str, code: str) -> tuple[bool, str]:
        step = totp.matching_step(secret, code, self.clock())
        if step is None:
            return False, "wrong TOTP code"
        async with self.kernel.db.begin() as conn:
            taken = await conn.execute(sa.update(totp_table).where(totp_table.c.id == ROW, totp_table.c.last_step < step)
                                       .values(last_step=step))
        if taken.rowcount != 1:
            return False, "this TOTP code was already used (wait for the next one)"
        return True, "totp"

    async def _consume_recovery(self, code: str) -> tuple[bool, str]:
        async with self.kernel.db.begin() as conn:
            rows = (await conn.execute(sa.select(recovery.c.id, recovery.c.salt, recovery.c.hash)
                                       .where(recovery.c.state == "active", recovery.c.used_at.is_(None)))).all()
            for row_id, salt, digest in rows:
                if secrets.compare_digest(totp.hash_recovery_code(code, salt), digest):
                    spent = await conn.execute(sa.update(recovery)
                                               .where(recovery.c.id == row_id, recovery.c.used_at.is_(None))
                                               .values(used_at=self.clock()))
                    if spent.rowcount == 1:
                        return True, "recovery"
        return False, "wrong TOTP or recovery code"

    async def verify(self, code: str | None, bucket: str, *, allow_recovery: bool = True) -> str:
        """Check ``code`` against the confirmed enrollment; returns ``"totp"`` or ``"recovery"``.

        400 ``totp_not_enrolled`` without a confirmed enrollment, 400 ``totp_code_required`` without a
        code, 400 ``invalid_totp_code`` for a wrong or replayed code, 429 ``totp_locked`` during a lockout."""
        if bucket not in BUCKETS:
            raise ValueError(bucket)
        if not code:
            raise BadRequest("a TOTP code (or a recovery code) is required", code="totp_code_required")
        if len(code) > MAX_CODE_CHARS:
            raise BadRequest("the code is too long", code="invalid_totp_code")
        async with self._lock:
            await self._check_lock(bucket)
            row = await self._row()
            secret = await self._vault_get(VAULT_SECRET) if row and row["confirmed"] else None
            if secret is None:
                raise BadRequest("no TOTP enrollment is confirmed: POST /api/approvals/totp/setup first",
                                 code="totp_not_enrolled")
            digits = "".join(code.split())  # "123 456" as some apps display it
            if totp.looks_like_code(digits):
                ok, kind = await self._consume_step(secret, digits)
            elif allow_recovery:
                ok, kind = await self._consume_recovery(code)
            else:
                ok, kind = False, "wrong TOTP code"
            if not ok:
                raise await self._fail(bucket, kind)
            await self._succeed(bucket)
        return kind

    # -- enrollment ------------------------------------------------------------------------------------
    async def setup(self, current_code: str | None) -> Setup:
        """Start an enrollment (a re-enrollment needs a current TOTP or recovery code). The previous
        secret stays in force until :meth:`confirm`. 409 ``pending_confirmation`` while an unconfirmed
        setup younger than 10 minutes exists."""
        row = await self._row()
        if self._pending_live(row):
            raise Conflict("a TOTP setup is waiting for confirmation: POST /api/approvals/totp/confirm",
                           code="pending_confirmation")
        if row and row["confirmed"]:
            await self.verify(current_code, "setup")
        secret = totp.new_secret()
        codes = [totp.new_recovery_code() for _ in range(RECOVERY_CODES)]
        await self._vault_set(VAULT_PENDING, secret)
        now = self.clock()
        async with self.kernel.db.begin() as conn:
            if row is None:
                await conn.execute(sa.insert(totp_table).values(id=ROW, confirmed=False, created_at=now, confirmed_at=None,
                                                                pending_since=now, last_step=-1))
            else:
                await conn.execute(sa.update(totp_table).where(totp_table.c.id == ROW).values(pending_since=now))
            await conn.execute(sa.delete(recovery).where(recovery.c.state == "pending"))
            for code in codes:
                salt = secrets.token_hex(8)
                await conn.execute(sa.insert(recovery).values(salt=salt, hash=totp.hash_recovery_code(code, salt),
                                                              state="pending", used_at=None))
        await self.kernel.audit.record("TotpSetup", target="approvals", detail={"reenroll": bool(row and row["confirmed"])})
        uri = totp.otpauth_uri(secret, self.config().totp_issuer, "approvals")
        qr = await asyncio.to_thread(totp.qr_data_uri, uri)
        return Setup(otpauth_uri=uri, secret=secret, qr_code=qr, recovery_codes=codes)

    async def confirm(self, code: str) -> None:
        """Finish a setup with a code of the new secret: it replaces the previous one."""
        async with self._lock:
            await self._check_lock("confirm")
            row = await self._row()
            pending = await self._vault_get(VAULT_PENDING) if self._pending_live(row) else None
            if pending is None:
                raise BadRequest("no TOTP setup is waiting for confirmation", code="totp_no_pending_setup")
            step = totp.matching_step(pending, code, self.clock())
            if step is None:
                raise await self._fail("confirm", "wrong TOTP code")
            await self._vault_set(VAULT_SECRET, pending)
            await self._vault_delete(VAULT_PENDING)
            async with self.kernel.db.begin() as conn:
                await conn.execute(sa.update(totp_table).where(totp_table.c.id == ROW).values(
                    confirmed=True, confirmed_at=self.clock(), pending_since=None, last_step=step))
                await conn.execute(sa.delete(recovery).where(recovery.c.state == "active"))
                await conn.execute(sa.update(recovery).where(recovery.c.state == "pending").values(state="active"))
            await self._succeed("confirm")
        await self.kernel.audit.record("TotpConfirmed", target="approvals")

    async def revoke(self, code: str | None) -> None:
        """Remove the enrollment (a current TOTP or recovery code is required)."""
        await self.verify(code, "revoke")
        await self._vault_delete(VAULT_SECRET)
        await self._vault_delete(VAULT_PENDING)
        async with self.kernel.db.begin() as conn:
            await conn.execute(sa.delete(recovery))
            await conn.execute(sa.delete(totp_table))
        await self.kernel.audit.record("TotpRevoked", target="approvals")

"""HTTP routes of the TOTP second factor: setup, confirm, status, revoke."""

from __future__ import annotations

from librefang import Router, current_kernel

from librefang_approvals.schemas import (
    TotpCodeRequest,
    TotpMessage,
    TotpSetupRequest,
    TotpSetupResult,
    TotpStatus,
)
from librefang_approvals.totp_store import TotpStore

router = Router("approvals_totp", tags=("approvals",))


def store() -> TotpStore:
    return current_kernel().services["approvals"].totp


@router.post("/api/approvals/totp/setup", body=TotpSetupRequest, response=TotpSetupResult)
async def totp_setup(body: TotpSetupRequest) -> TotpSetupResult:
    """Start a TOTP enrollment: the secret, its otpauth URI and QR code, and 8 recovery codes (shown
    once). Re-enrolling needs ``current_code``; 409 while a setup awaits confirmation."""
    setup = await store().setup(body.current_code)
    return TotpSetupResult(otpauth_uri=setup.otpauth_uri, secret=setup.secret, qr_code=setup.qr_code,
                           recovery_codes=setup.recovery_codes,
                           message="Scan the QR code with an authenticator app, then POST a code to "
                                   "/api/approvals/totp/confirm. Keep the recovery codes somewhere safe: "
                                   "each works once.")


@router.post("/api/approvals/totp/confirm", body=TotpCodeRequest, response=TotpMessage)
async def totp_confirm(body: TotpCodeRequest) -> TotpMessage:
    """Confirm the pending enrollment with a current code of the new secret."""
    await store().confirm(body.code)
    return TotpMessage(status="confirmed", message="TOTP enrollment confirmed")


@router.get("/api/approvals/totp/status", response=TotpStatus)
async def totp_status() -> TotpStatus:
    """Whether TOTP is enrolled, confirmed and enforced, its scope and the recovery codes left."""
    return TotpStatus(**await store().status())


@router.post("/api/approvals/totp/revoke", body=TotpCodeRequest, response=TotpMessage)
async def totp_revoke(body: TotpCodeRequest) -> TotpMessage:
    """Remove the enrollment (needs a current TOTP or recovery code)."""
    await store().revoke(body.code)
    return TotpMessage(status="revoked", message="TOTP enrollment removed")

"""RFC 4226 HOTP and RFC 6238 TOTP (SHA-1, 6 digits, 30-second steps) with the standard library.

Written with :mod:`hmac` and :mod:`hashlib` rather than a dependency: the algorithm is a dozen
lines and is checked against the RFC's test vectors. Replay and lockout are the caller's job
(:mod:`librefang_approvals.totp_store`): :func:`matching_step` only says which step a code is for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

DIGITS = 6
STEP_SECS = 30
SKEW_STEPS = 1  # accept the previous and the next step too (clock drift, typing time)
SECRET_BYTES = 20  # 160 bits, the RFC 4226 recommendation for HMAC-SHA-1


def new_secret() -> str:
    """A random base32 secret (no padding), as authenticator apps expect."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret_b32: str) -> bytes:
    text = secret_b32.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 §5.3: HMAC over the 8-byte counter, dynamic truncation, modulo 10^digits."""
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(now: float) -> int:
    """The RFC 6238 time step (T) of the Unix time ``now``."""
    return int(now // STEP_SECS)


def code_at(secret_b32: str, now: float) -> str:
    """The code an authenticator shows at ``now``."""
    return hotp(_key(secret_b32), step_at(now))


def looks_like_code(code: str) -> bool:
    """Six ASCII digits (anything else is not worth an HMAC)."""
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def matching_step(secret_b32: str, code: str, now: float, skew: int = SKEW_STEPS) -> int | None:
    """The time step within ``±skew`` of ``now`` whose code equals ``code`` (constant-time
    comparisons over every candidate), or None."""
    code = code.strip()
    if not looks_like_code(code):
        return None
    key = _key(secret_b32)
    current = step_at(now)
    found: int | None = None
    for step in range(current - skew, current + skew + 1):
        if hmac.compare_digest(hotp(key, step), code) and found is None:
            found = step
    return found


def otpauth_uri(secret_b32: str, issuer: str, account: str) -> str:
    """The ``otpauth://totp/...`` URI authenticator apps import (Key Uri Format)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode({"secret": secret_b32, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
                       "period": STEP_SECS})
    return f"otpauth://totp/{label}?{query}"


def qr_data_uri(text: str) -> str:
    """An SVG QR code of ``text`` as a ``data:`` URI (rendered by the dashboard's <img>)."""
    import segno

    return segno.make(text, error="m").svg_data_uri(scale=4)


def new_recovery_code() -> str:
    """``xxxx-xxxx-xxxx-xxxx``: 64 random bits in hex."""
    raw = secrets.token_hex(8)
    return "-".join(raw[i:i + 4] for i in range(0, 16, 4))


def normalize_recovery_code(code: str) -> str:
    """Lower case without separators or spaces (what is hashed)."""
    return "".join(ch for ch in code.strip().lower() if ch not in "- ")


def hash_recovery_code(code: str, salt: str) -> str:
    """Salted SHA-256 of a normalized recovery code (64 random bits: a fast hash is enough)."""
    return hashlib.sha256(f"{salt}:{normalize_recovery_code(code)}".encode()).hexdigest()

"""RFC 6238 / RFC 4226 test vectors and the helpers around them."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

from librefang_approvals import totp

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()


def test_rfc6238_sha1_vectors() -> None:
    # RFC 6238 appendix B, SHA-1, 8 digits.
    vectors = {59: "94287082", 1111111109: "07081804", 1111111111: "14050471", 1234567890: "89005924",
               2000000000: "69279037", 20000000000: "65353130"}
    key = b"12345678901234567890"
    for now, code in vectors.items():
        assert totp.hotp(key, totp.step_at(now), digits=8) == code


def test_rfc4226_hotp_vectors() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
    assert [totp.hotp(b"12345678901234567890", i) for i in range(10)] == expected


def test_matching_step_accepts_one_step_of_skew_only() -> None:
    now = 1_900_000_000.0
    step = totp.step_at(now)
    for offset in (-1, 0, 1):
        code = totp.code_at(RFC_SECRET, now + offset * 30)
        assert totp.matching_step(RFC_SECRET, code, now) == step + offset
    assert totp.matching_step(RFC_SECRET, totp.code_at(RFC_SECRET, now + 60), now) is None
    assert totp.matching_step(RFC_SECRET, totp.code_at(RFC_SECRET, now - 60), now) is None
    for junk in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦", " 12 34 "):
        assert totp.matching_step(RFC_SECRET, junk, now) is None


def test_new_secrets_are_random_base32_of_160_bits() -> None:
    secrets = {totp.new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
        assert len(raw) == 20


def test_otpauth_uri_and_qr_code() -> None:
    uri = totp.otpauth_uri("JBSWY3DPEHPK3PXP", "Libre Fang", "approvals")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert parts.path == "/Libre%20Fang:approvals"
    query = parse_qs(parts.query)
    assert query == {"secret": ["JBSWY3DPEHPK3PXP"], "issuer": ["Libre Fang"], "algorithm": ["SHA1"],
                     "digits": ["6"], "period": ["30"]}
    assert totp.qr_data_uri(uri).startswith("data:image/svg+xml")


def test_recovery_codes_hash_normalized_and_salted() -> None:
    code = totp.new_recovery_code()
    assert len(code) == 19 and code.count("-") == 3
    assert totp.hash_recovery_code(code, "s1") == totp.hash_recovery_code(code.upper().replace("-", " "), "s1")
    assert totp.hash_recovery_code(code, "s1") != totp.hash_recovery_code(code, "s2")

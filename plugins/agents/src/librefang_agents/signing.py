"""Ed25519-signed manifests: ``{manifest, content_hash, signature, signer_public_key, signer_id}``.

``content_hash`` is the hex SHA-256 of ``manifest``; ``signature`` is Ed25519 over the hash's hex
text (as the reference implementation signs). Keys and signatures are written as hex; base64 and
JSON byte arrays (the reference's encoding) are accepted on input. Verification requires the
signer's key to be in ``trusted_manifest_signers`` — an empty list trusts nobody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - PyNaCl is imported where keys are made or checked, not at start-up
    from nacl.signing import SigningKey

# A missing PyNaCl still fails this module's import (find_spec does not import the package).
if importlib.util.find_spec("nacl") is None:  # pragma: no cover - pynacl is a declared dependency
    raise ImportError("librefang-agents needs the 'pynacl' package (pip install pynacl)")

MAX_ENVELOPE_BYTES = 2 * 1024 * 1024


class SignatureError(Exception):
    """The envelope is malformed, its signature is bad, or its signer is not trusted."""


def hash_manifest(manifest: str) -> str:
    """Hex SHA-256 of the manifest text."""
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def decode_bytes(value: Any, size: int, what: str) -> bytes:
    """Bytes from hex, base64 or a JSON array of ints; must be exactly ``size`` long."""
    raw: bytes | None = None
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) == size * 2:
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raw = None
        if raw is None:
            try:
                raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                try:
                    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
                except (binascii.Error, ValueError):
                    raw = None
    if raw is None or len(raw) != size:
        raise SignatureError(f"{what} must be {size} bytes as hex, base64 or a byte array")
    return raw


def parse_trusted_signers(values: Any) -> list[bytes]:
    """Validate the ``trusted_manifest_signers`` config value into raw 32-byte public keys."""
    if values is None:
        return []
    if not isinstance(values, list):
        raise ValueError("trusted_manifest_signers must be a list of Ed25519 public keys")
    keys = []
    for index, value in enumerate(values):
        try:
            keys.append(decode_bytes(value, 32, f"trusted_manifest_signers[{index}]"))
        except SignatureError as exc:
            raise ValueError(str(exc)) from None
    return keys


def new_signing_key() -> SigningKey:
    """A fresh random Ed25519 key."""
    from nacl.signing import SigningKey

    return SigningKey.generate()


def load_signing_key(text: str) -> SigningKey:
    """A signing key from its 32-byte seed (hex or base64)."""
    from nacl.signing import SigningKey

    return SigningKey(decode_bytes(text, 32, "signing key seed"))


def sign_manifest(manifest: str, key: SigningKey, signer_id: str = "") -> dict[str, str]:
    """The signed envelope of ``manifest`` (a JSON-able dict)."""
    content_hash = hash_manifest(manifest)
    signature = key.sign(content_hash.encode("ascii")).signature
    return {
        "manifest": manifest,
        "content_hash": content_hash,
        "signature": signature.hex(),
        "signer_public_key": key.verify_key.encode().hex(),
        "signer_id": signer_id,
    }


@dataclass(frozen=True)
class VerifiedManifest:
    manifest: str
    signer_public_key: str
    signer_id: str


def verify_envelope(envelope: Any, trusted: list[bytes]) -> VerifiedManifest:
    """Check an envelope (a dict or its JSON text) against the trusted keys.

    Order: shape → signer trusted → hash matches the text → signature over the hash.
    """
    if isinstance(envelope, str):
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise SignatureError("signed manifest envelope is too large")
        try:
            envelope = json.loads(envelope)
        except ValueError as exc:
            raise SignatureError(f"signed manifest is not valid JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise SignatureError("signed manifest must be a JSON object")
    manifest = envelope.get("manifest")
    content_hash = envelope.get("content_hash")
    if not isinstance(manifest, str) or not isinstance(content_hash, str):
        raise SignatureError("signed manifest needs string fields 'manifest' and 'content_hash'")
    public_key = decode_bytes(envelope.get("signer_public_key"), 32, "signer_public_key")
    signature = decode_bytes(envelope.get("signature"), 64, "signature")
    if not trusted:
        raise SignatureError("no trusted_manifest_signers are configured: signed manifests are refused")
    if public_key not in trusted:
        raise SignatureError(f"signer {public_key.hex()} is not in trusted_manifest_signers")
    if hash_manifest(manifest) != content_hash.lower():
        raise SignatureError("content hash mismatch: the manifest was changed after signing")
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(public_key).verify(content_hash.encode("ascii"), signature)
    except (BadSignatureError, UnicodeEncodeError):
        raise SignatureError("signature verification failed") from None
    signer_id = envelope.get("signer_id") or ""
    return VerifiedManifest(manifest=manifest, signer_public_key=public_key.hex(), signer_id=str(signer_id)[:200])

"""Secrets vault: values encrypted with NaCl SecretBox in ``<home>/vault.enc``.

The key comes from ``LIBREFANG_VAULT_KEY`` (64 hex chars or base64 of 32 bytes) or from a 0600
key file ``<home>/vault.key`` created on first use. Config values ``vault:NAME`` and ``env:NAME``
resolve through :meth:`Vault.resolve`. Plaintext lives only in memory; Python cannot zero
immutable strings, so wiping is best-effort.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class VaultError(Exception):
    """The vault could not be read or the key is wrong."""


def _decode_key(text: str) -> bytes:
    text = text.strip()
    try:
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            return bytes.fromhex(text)
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VaultError("LIBREFANG_VAULT_KEY must be 64 hex characters or base64 of 32 bytes") from None
    if len(raw) != 32:
        raise VaultError("vault key must be 32 bytes")
    return raw


class Vault:
    """Encrypted name → value store."""

    def __init__(self, home: Path) -> None:
        self.path = home / "vault.enc"
        self.key_path = home / "vault.key"
        self._values: dict[str, str] | None = None

    def _key(self) -> bytes:
        env = os.environ.get("LIBREFANG_VAULT_KEY")
        if env:
            return _decode_key(env)
        if self.key_path.exists():
            return _decode_key(self.key_path.read_text())
        from nacl.utils import random

        key = random(32)
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        return key

    def _load(self) -> dict[str, str]:
        if self._values is not None:
            return self._values
        if not self.path.exists():
            self._values = {}
            return self._values
        from nacl.exceptions import CryptoError
        from nacl.secret import SecretBox

        try:
            plain = SecretBox(self._key()).decrypt(self.path.read_bytes())
        except CryptoError:
            raise VaultError("vault.enc cannot be decrypted with the configured key") from None
        self._values = json.loads(plain.decode("utf-8"))
        return self._values

    def _save(self) -> None:
        from nacl.secret import SecretBox

        data = json.dumps(self._values or {}).encode("utf-8")
        blob = SecretBox(self._key()).encrypt(data)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def get(self, name: str) -> str | None:
        """The secret ``name``, or ``None``."""
        return self._load().get(name)

    def set(self, name: str, value: str) -> None:
        """Store (or replace) a secret."""
        if not NAME_PATTERN.match(name):
            raise ValueError("secret name must be 1-128 of A-Z a-z 0-9 _ . -")
        self._load()[name] = value
        self._save()

    def delete(self, name: str) -> bool:
        """Remove a secret; True when it existed."""
        values = self._load()
        if name not in values:
            return False
        del values[name]
        self._save()
        return True

    def names(self) -> list[str]:
        return sorted(self._load())

    def known_values(self) -> list[str]:
        """Every stored value long enough to be worth scrubbing from text."""
        try:
            return [v for v in self._load().values() if len(v) >= 6]
        except VaultError:
            return []

    def resolve(self, value: str) -> str:
        """Resolve ``env:NAME`` and ``vault:NAME`` references; other strings are literal."""
        if value.startswith("env:"):
            return os.environ.get(value[4:], "")
        if value.startswith("vault:"):
            return self.get(value[6:]) or ""
        return value

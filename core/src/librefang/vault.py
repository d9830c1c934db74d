"""Secrets vault: values encrypted with NaCl SecretBox in ``<home>/vault.enc``.

The key comes from ``LIBREFANG_VAULT_KEY`` (64 hex chars or base64 of 32 bytes) or from a 0600
key file ``<home>/vault.key`` created on first write. Config values ``vault:NAME`` and ``env:NAME``
resolve through :meth:`Vault.resolve`. Plaintext lives only in memory; Python cannot zero
immutable strings, so wiping is best-effort.

Several processes may use one vault (the daemon and ``librefang vault set``): writes take an
exclusive ``flock`` and re-read the file first, and readers notice a changed file by its mtime.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
MAX_SECRETS = 10_000
MAX_VALUE_CHARS = 64 * 1024
ENV_KEY = "LIBREFANG_VAULT_KEY"


class VaultError(Exception):
    """The vault could not be read, the key is wrong, or a reference names no secret.

    Messages name files, variables and secret *names*, never a secret value.
    """


def _decode_key(text: str, source: str) -> bytes:
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"{source} must be 64 hex characters or base64 of 32 bytes") from None
    if len(raw) != 32:
        raise VaultError(f"{source} must decode to 32 bytes, got {len(raw)}")
    return raw


class Vault:
    """Encrypted name → value store."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "vault.enc"
        self.key_path = home / "vault.key"
        self._lock_path = home / "vault.lock"
        self._values: dict[str, str] | None = None
        self._mtime: int | None = None

    # -- key ---------------------------------------------------------------------------------
    def key_source(self) -> str:
        """Where the key comes from: the environment variable or the key file."""
        return ENV_KEY if os.environ.get(ENV_KEY) else str(self.key_path)

    def _key(self, create: bool) -> bytes:
        env = os.environ.get(ENV_KEY)
        if env:
            return _decode_key(env, ENV_KEY)
        if self.key_path.exists():
            mode = self.key_path.stat().st_mode & 0o777
            if mode & 0o077:
                raise VaultError(f"{self.key_path} is readable by other users (mode {mode:o}); chmod 600 it")
            return _decode_key(self.key_path.read_text(), str(self.key_path))
        if not create:
            raise VaultError(f"{self.path} exists but there is no key: set {ENV_KEY} or restore {self.key_path}")
        from nacl.utils import random

        key = random(32)
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        return key

    # -- file ------------------------------------------------------------------------------------
    def _file_mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _load(self) -> dict[str, str]:
        mtime = self._file_mtime()
        if self._values is not None and mtime == self._mtime:
            return self._values
        if mtime is None:
            self._values, self._mtime = {}, None
            return self._values
        from nacl.exceptions import CryptoError
        from nacl.secret import SecretBox

        try:
            plain = SecretBox(self._key(create=False)).decrypt(self.path.read_bytes())
        except CryptoError:
            raise VaultError(
                f"{self.path} cannot be decrypted with the key from {self.key_source()} (wrong key or corrupt file)"
            ) from None
        values = json.loads(plain.decode("utf-8"))
        if not isinstance(values, dict):
            raise VaultError(f"{self.path} does not hold a name → value map")
        self._values, self._mtime = values, mtime
        return values

    def _save(self, values: dict[str, str]) -> None:
        from nacl.secret import SecretBox

        blob = SecretBox(self._key(create=True)).encrypt(json.dumps(values).encode("utf-8"))
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._values, self._mtime = values, self._file_mtime()

    @contextmanager
    def _write_lock(self) -> Iterator[dict[str, str]]:
        import fcntl

        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._values = None  # another process may have written since we last read
            yield dict(self._load())
        finally:
            os.close(fd)

    # -- public API ------------------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The secret ``name``, or ``None``."""
        return self._load().get(name)

    def set(self, name: str, value: str) -> None:
        """Store (or replace) a secret."""
        if not NAME_PATTERN.match(name):
            raise ValueError("secret name must be 1-128 of A-Z a-z 0-9 _ . -")
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise ValueError(f"secret value must be a string of at most {MAX_VALUE_CHARS} characters")
        with self._write_lock() as values:
            if name not in values and len(values) >= MAX_SECRETS:
                raise ValueError(f"the vault holds at most {MAX_SECRETS} secrets")
            values[name] = value
            self._save(values)

    def delete(self, name: str) -> bool:
        """Remove a secret; True when it existed."""
        with self._write_lock() as values:
            if name not in values:
                return False
            del values[name]
            self._save(values)
            return True

    def names(self) -> list[str]:
        """The names of every stored secret (never the values)."""
        return sorted(self._load())

    def known_values(self) -> list[str]:
        """Every stored value long enough to be worth scrubbing from text."""
        try:
            return [v for v in self._load().values() if len(v) >= 6]
        except VaultError:
            return []

    def resolve(self, value: str) -> str:
        """Resolve a config value: ``env:NAME`` → that variable ("" when unset), ``vault:NAME`` →
        that secret (:class:`VaultError` when the vault has no such name or cannot be opened),
        anything else is literal."""
        if value.startswith("env:"):
            return os.environ.get(value[4:], "")
        if value.startswith("vault:"):
            name = value[6:]
            secret = self.get(name)
            if secret is None:
                raise VaultError(f"vault:{name} is not in {self.path} (add it with: librefang vault set {name})")
            return secret
        return value

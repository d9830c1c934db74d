"""Secrets vault: SecretBox file, key from env or a 0600 key file, wrong key, references."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from click.testing import CliRunner
from librefang.app import build_app
from librefang.cli import main
from librefang.testing import make_client
from librefang.vault import Vault, VaultError

SECRET = "sk-vault-secret-value-0123456789"


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_created_0600_and_file_encrypted(librefang_home, monkeypatch):
    monkeypatch.delenv("LIBREFANG_VAULT_KEY")
    vault = Vault(librefang_home)
    vault.set("OPENAI", SECRET)
    assert mode(librefang_home / "vault.key") == 0o600
    assert mode(librefang_home / "vault.enc") == 0o600
    assert len((librefang_home / "vault.key").read_text()) == 64
    blob = (librefang_home / "vault.enc").read_bytes()
    assert SECRET.encode() not in blob and b"OPENAI" not in blob
    again = Vault(librefang_home)  # a new process: key from the file
    assert again.get("OPENAI") == SECRET and again.names() == ["OPENAI"]


def test_key_from_env_hex_or_base64(librefang_home, monkeypatch):
    raw = os.urandom(32)
    monkeypatch.setenv("LIBREFANG_VAULT_KEY", raw.hex())
    Vault(librefang_home).set("A", SECRET)
    assert not (librefang_home / "vault.key").exists()
    monkeypatch.setenv("LIBREFANG_VAULT_KEY", base64.b64encode(raw).decode())
    assert Vault(librefang_home).get("A") == SECRET


@pytest.mark.parametrize("bad", ["short", "zz" * 32, base64.b64encode(b"x" * 16).decode()])
def test_malformed_env_key_is_a_clear_error(librefang_home, monkeypatch, bad):
    monkeypatch.setenv("LIBREFANG_VAULT_KEY", bad)
    with pytest.raises(VaultError, match="LIBREFANG_VAULT_KEY"):
        Vault(librefang_home).set("A", "v")


def test_wrong_key_is_a_clear_error(librefang_home, monkeypatch):
    Vault(librefang_home).set("A", SECRET)
    monkeypatch.setenv("LIBREFANG_VAULT_KEY", "11" * 32)
    with pytest.raises(VaultError) as info:
        Vault(librefang_home).get("A")
    message = str(info.value)
    assert "cannot be decrypted" in message and "LIBREFANG_VAULT_KEY" in message
    assert SECRET not in message and "11" * 32 not in message


def test_key_file_readable_by_others_is_refused(librefang_home, monkeypatch):
    monkeypatch.delenv("LIBREFANG_VAULT_KEY")
    Vault(librefang_home).set("A", SECRET)
    os.chmod(librefang_home / "vault.key", 0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        Vault(librefang_home).get("A")


def test_vault_without_its_key_is_a_clear_error(librefang_home, monkeypatch):
    monkeypatch.delenv("LIBREFANG_VAULT_KEY")
    Vault(librefang_home).set("A", SECRET)
    (librefang_home / "vault.key").unlink()
    with pytest.raises(VaultError, match="no key"):
        Vault(librefang_home).get("A")


def test_resolve_references(librefang_home, monkeypatch):
    vault = Vault(librefang_home)
    vault.set("DB_PASSWORD", SECRET)
    monkeypatch.setenv("SOME_ENV", "from-env")
    assert vault.resolve("vault:DB_PASSWORD") == SECRET
    assert vault.resolve("env:SOME_ENV") == "from-env"
    assert vault.resolve("env:NOT_SET_ANYWHERE") == ""
    assert vault.resolve("plain literal") == "plain literal"
    with pytest.raises(VaultError, match="vault:MISSING is not in"):
        vault.resolve("vault:MISSING")


def test_names_sizes_and_delete(librefang_home):
    vault = Vault(librefang_home)
    for bad in ("", "has space", "../x", "x" * 129):
        with pytest.raises(ValueError):
            vault.set(bad, "v")
    with pytest.raises(ValueError):
        vault.set("BIG", "x" * (64 * 1024 + 1))
    vault.set("K", "v")
    assert vault.delete("K") and not vault.delete("K") and vault.names() == []


def test_two_instances_see_each_others_writes(librefang_home):
    daemon, cli = Vault(librefang_home), Vault(librefang_home)
    daemon.set("FIRST", "1")
    assert cli.get("FIRST") == "1"
    cli.set("SECOND", "2")  # re-reads under the lock: FIRST is not lost
    assert daemon.get("SECOND") == "2" and daemon.names() == ["FIRST", "SECOND"]


async def test_api_key_from_vault(make_kernel, librefang_home):
    Vault(librefang_home).set("ADMIN_KEY", SECRET)
    kernel = await make_kernel(load_entry_points=False, config='api_key = "vault:ADMIN_KEY"\n')
    client = make_client(build_app(kernel))
    remote = {"client": ("198.51.100.7", 5000)}
    ok = await client.get("/api/config", headers={"Authorization": f"Bearer {SECRET}"}, scope_base=remote)
    assert ok.status_code == 200
    assert SECRET not in (await ok.get_data()).decode()
    assert (await client.get("/api/config", headers={"Authorization": "Bearer vault:ADMIN_KEY"},
                             scope_base=remote)).status_code == 401


def test_cli_vault_commands(librefang_home):
    runner = CliRunner()
    result = runner.invoke(main, ["vault", "set", "TELEGRAM_TOKEN", "--stdin"], input=SECRET + "\n")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and 'vault:TELEGRAM_TOKEN' in result.output
    assert Vault(librefang_home).get("TELEGRAM_TOKEN") == SECRET
    result = runner.invoke(main, ["vault", "set", "PROMPTED"], input="typed-value\n")
    assert result.exit_code == 0 and "typed-value" not in result.output
    listing = runner.invoke(main, ["vault", "list"])
    assert listing.output.split() == ["PROMPTED", "TELEGRAM_TOKEN"] and SECRET not in listing.output
    assert runner.invoke(main, ["vault", "remove", "PROMPTED"]).exit_code == 0
    missing = runner.invoke(main, ["vault", "remove", "PROMPTED"])
    assert missing.exit_code == 1 and "no secret named PROMPTED" in missing.output
    bad = runner.invoke(main, ["vault", "set", "bad name", "--stdin"], input="v")
    assert bad.exit_code == 1

"""``librefang agent list|spawn|kill|show|sign|keygen``.

All but ``sign`` and ``keygen`` talk to the running daemon of the home (found through
``daemon.json``) with the API key from ``LIBREFANG_API_KEY`` or the config. ``sign`` and ``keygen``
work offline: a signing key is a file holding the 32-byte Ed25519 seed as hex.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from librefang.client import call_daemon, resolve_home

_home = resolve_home
_call = call_daemon

home_option = click.option("--home", envvar="LIBREFANG_HOME", help="Home folder (default ~/.librefang)")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON answer")


@click.group()
def agent() -> None:
    """Manage agents: list, spawn, show, kill, and sign manifests."""


@agent.command("list")
@home_option
@json_option
@click.option("-q", "query", default=None, help="Substring of name or description")
@click.option("--status", default=None, help="created, running, suspended, ...")
@click.option("--limit", type=int, default=100, show_default=True)
def list_agents(home: str | None, as_json: bool, query: str | None, status: str | None, limit: int) -> None:
    """List agents of the running daemon."""
    params: dict[str, Any] = {"limit": limit}
    if query:
        params["q"] = query
    if status:
        params["status"] = status
    body = _call(_home(home), "GET", "/api/agents", params=params)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    if not body["items"]:
        click.echo("no agents")
        return
    click.echo(f"{'ID':<36}  {'NAME':<24} {'STATE':<10} {'MODE':<8} MODEL")
    for item in body["items"]:
        model = f"{item['model_provider']}/{item['model_name']}"
        click.echo(f"{item['id']:<36}  {item['name']:<24} {item['state']:<10} {item['mode']:<8} {model}")
    if body["total"] > len(body["items"]):
        click.echo(f"({len(body['items'])} of {body['total']} shown)")


@agent.command()
@home_option
@json_option
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--template", "-t", default=None, help="Spawn from a template instead of a manifest file")
@click.option("--name", "-n", default=None, help="Override the agent's name")
@click.option("--signed", is_flag=True, help="MANIFEST is a signed envelope (JSON) made by `agent sign`")
def spawn(home: str | None, as_json: bool, manifest: Path | None, template: str | None, name: str | None,
          signed: bool) -> None:
    """Spawn an agent from a MANIFEST file (TOML, or a signed envelope with --signed) or a --template."""
    if (manifest is None) == (template is None):
        raise click.UsageError("give a MANIFEST file or --template, not both")
    payload: dict[str, Any] = {}
    if manifest is not None:
        try:
            text = manifest.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot read {manifest}: {exc}") from None
        payload["signed_manifest" if signed else "manifest_toml"] = text
    else:
        payload["template"] = template
    if name:
        payload["name"] = name
    body = _call(_home(home), "POST", "/api/agents", json=payload)
    click.echo(json.dumps(body, indent=2) if as_json else f"spawned {body['name']} ({body['agent_id']})")


def _resolve_id(home: Path, ident: str) -> str:
    """Accept an agent id or a name."""
    import uuid

    try:
        return str(uuid.UUID(ident))
    except ValueError:
        pass
    body = _call(home, "GET", "/api/agents", params={"q": ident, "limit": 500})
    for item in body["items"]:
        if item["name"] == ident:
            return item["id"]
    raise click.ClickException(f"no agent named {ident!r}")


@agent.command()
@home_option
@json_option
@click.argument("agent_ref")
def show(home: str | None, as_json: bool, agent_ref: str) -> None:
    """Show one agent (by id or name)."""
    path = _home(home)
    body = _call(path, "GET", f"/api/agents/{_resolve_id(path, agent_ref)}")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    model = body["model"]
    click.echo(f"{body['name']} ({body['id']})")
    click.echo(f"  state:   {body['state']}   mode: {body['mode']}   profile: {body['profile'] or '-'}")
    click.echo(f"  model:   {model['provider']}/{model['model']} (max_tokens {model['max_tokens']}, "
               f"temperature {model['temperature']})")
    click.echo(f"  tools:   {', '.join(body['tools']) or '(none)'}")
    click.echo(f"  created: {body['created_at']}   last active: {body['last_active']}")
    if body.get("description"):
        click.echo(f"  {body['description']}")


@agent.command()
@home_option
@click.argument("agent_ref")
def kill(home: str | None, agent_ref: str) -> None:
    """Kill an agent (by id or name)."""
    path = _home(home)
    body = _call(path, "DELETE", f"/api/agents/{_resolve_id(path, agent_ref)}")
    click.echo(f"{body['status']}: {body['agent_id']}")


@agent.command()
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
def keygen(key_file: Path) -> None:
    """Create a new Ed25519 signing key in KEY_FILE (0600) and print its public key."""
    from librefang_agents.signing import new_signing_key

    if key_file.exists():
        raise click.ClickException(f"{key_file} already exists; refusing to overwrite a key")
    key = new_signing_key()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.encode().hex() + "\n")
    click.echo(key.verify_key.encode().hex())


@agent.command()
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File holding the Ed25519 seed (hex), as written by `agent keygen`")
@click.option("--signer-id", default="", help="Who signed (an email or key name), stored in the envelope")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the envelope here instead of standard output")
def sign(manifest: Path, key_file: Path, signer_id: str, output: Path | None) -> None:
    """Sign MANIFEST (TOML) with an Ed25519 key; prints the signed envelope (JSON).

    The daemon accepts it when the public key is listed in ``trusted_manifest_signers``.
    """
    from librefang_agents.manifest import ManifestError, parse_manifest
    from librefang_agents.signing import SignatureError, load_signing_key, sign_manifest

    text = manifest.read_text(encoding="utf-8")
    try:
        parse_manifest(text)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        key = load_signing_key(key_file.read_text().strip())
    except SignatureError as exc:
        raise click.ClickException(f"{key_file}: {exc}") from None
    envelope = json.dumps(sign_manifest(text, key, signer_id), indent=2)
    if output is None:
        sys.stdout.write(envelope + "\n")
    else:
        output.write_text(envelope + "\n", encoding="utf-8")
        click.echo(f"signed by {key.verify_key.encode().hex()} -> {output}", err=True)

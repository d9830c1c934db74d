"""The command line's HTTP client for the running daemon of a home, shared by core and plugin
sub-commands (so each ``librefang <plugin> ...`` command does not grow its own copy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from librefang.config import default_home


def resolve_home(home: str | None) -> Path:
    """The ``--home`` option's folder, or ``$LIBREFANG_HOME`` / ``~/.librefang``."""
    return Path(home).expanduser() if home else default_home()


def client_headers(home: Path) -> dict[str, str]:
    """Authorization for the daemon: ``LIBREFANG_API_KEY``, else the config's key (a stored hash cannot
    authenticate, so it gives no header)."""
    key = os.environ.get("LIBREFANG_API_KEY")
    if not key:
        try:
            from librefang.config import Config
            from librefang.vault import Vault

            key = Vault(home).resolve(Config.load(home).core.api_key)
        except Exception:  # noqa: BLE001 - no usable key: try without one (loopback no-key mode)
            key = ""
    if key.startswith("$"):
        key = ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def daemon_url(home: Path) -> str | None:
    """The URL from ``daemon.json`` when its process is alive, else ``None``."""
    from librefang.home import pid_alive, read_daemon_file

    info = read_daemon_file(home)
    try:
        pid = int(info.get("pid", 0)) if isinstance(info, dict) else 0
    except (TypeError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    url = info.get("url") if isinstance(info, dict) else None
    return url if isinstance(url, str) and url.startswith("http://") else None


def call_daemon(home: Path, method: str, path: str, *, timeout: float = 30, **kwargs: Any) -> Any:
    """Send a request to the home's daemon; the JSON (or text) answer, or a ClickException naming the error."""
    import httpx

    url = daemon_url(home)
    if url is None:
        raise click.ClickException(f"no daemon is running for {home} (start it with: librefang start)")
    try:
        response = httpx.request(method, url + path, headers=client_headers(home), timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the daemon at {url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        message = body.get("error") if isinstance(body, dict) else body
        raise click.ClickException(f"{response.status_code}: {message}")
    return body

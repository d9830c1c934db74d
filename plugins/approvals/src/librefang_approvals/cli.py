"""``librefang approvals list|approve|reject|modify``: decide approval requests of the running daemon.

The commands talk to the daemon of the home (found through ``daemon.json``) over its HTTP API, with
the API key from ``LIBREFANG_API_KEY`` or the config.
"""

from __future__ import annotations

import json
from typing import Any

import click
from librefang.client import call_daemon, resolve_home

_home = resolve_home


def _call(home_option_value: str | None, method: str, path: str, **kwargs: Any) -> Any:
    return call_daemon(resolve_home(home_option_value), method, path, **kwargs)


home_option = click.option("--home", envvar="LIBREFANG_HOME", help="Home folder (default ~/.librefang)")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON answer")


@click.group()
def approvals() -> None:
    """List and decide approval requests of gated tool calls."""


@approvals.command("list")
@home_option
@json_option
@click.option("--all", "show_all", is_flag=True, help="Decided requests too, not only pending ones")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
def list_requests(home: str | None, as_json: bool, show_all: bool, limit: int) -> None:
    """Pending requests (oldest decisions last)."""
    params: dict[str, Any] = {"limit": limit}
    if not show_all:
        params["status"] = "pending"
    body = _call(home, "GET", "/api/approvals", params=params)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    if not body["approvals"]:
        click.echo("no pending approvals" if not show_all else "no approvals")
        return
    for item in body["approvals"]:
        totp = " [totp]" if item["totp_required"] and item["status"] == "pending" else ""
        click.echo(f"{item['id']}  {item['status']:<9} {item['risk_level']:<8} {item['agent_name']}: "
                   f"{item['tool_name']} {item['action_summary'][:80]}{totp}")


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--totp", "totp_code", default=None, help="TOTP or recovery code, when the tool needs one")
@home_option
def approve(approval_id: str, totp_code: str | None, home: str | None) -> None:
    """Approve a pending request: the waiting tool call runs."""
    body = {"totp_code": totp_code} if totp_code else {}
    result = _call(home, "POST", f"/api/approvals/{approval_id}/approve", json=body)
    click.echo(f"{result['id']} {result['status']}")


@approvals.command("reject")
@click.argument("approval_id")
@home_option
def reject(approval_id: str, home: str | None) -> None:
    """Reject a pending request: the agent receives a refusal."""
    result = _call(home, "POST", f"/api/approvals/{approval_id}/reject")
    click.echo(f"{result['id']} {result['status']}")


@approvals.command("modify")
@click.argument("approval_id")
@click.option("--feedback", required=True, help="What the agent should change before trying again")
@home_option
def modify(approval_id: str, feedback: str, home: str | None) -> None:
    """Send a pending request back with feedback for the agent."""
    result = _call(home, "POST", f"/api/approvals/{approval_id}/modify", json={"feedback": feedback})
    click.echo(f"{result['id']} {result['status']}")

"""GitHub Copilot sign-in through the OAuth 2.0 device flow (RFC 8628).

``start`` asks GitHub for a device code and returns the user code and verification URI the user
opens in a browser; ``poll`` exchanges the device code for a token once the user approved, and stores
the token in the vault under the ``github-copilot`` provider's key name. The endpoint URLs and the
client id come from ``[providers]`` (``copilot_device_code_url``, ``copilot_token_url``,
``copilot_client_id``), so tests and enterprise installs can point them elsewhere.

Flows live in memory (they last minutes and a restart simply means "start again"), bounded in number.
Polls faster than GitHub's ``interval`` are answered ``pending`` without calling GitHub, so a busy
dashboard cannot get the device code throttled.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from librefang.errors import BadGateway, NotFound, ServiceUnavailable

from librefang_providers.service import catalog_service

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

PROVIDER_ID = "github-copilot"
MAX_FLOWS = 32
MAX_BODY_BYTES = 64 * 1024
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FLOWS_KEY = "providers.copilot_flows"


@dataclass
class DeviceFlow:
    device_code: str
    interval: int
    expires_at: float
    next_poll_at: float


def _flows(kernel: Kernel) -> dict[str, DeviceFlow]:
    flows = kernel.services.get(FLOWS_KEY)
    if not isinstance(flows, dict):
        flows = kernel.services[FLOWS_KEY] = {}
    return flows


def _purge(flows: dict[str, DeviceFlow]) -> None:
    now = time.monotonic()
    for poll_id in [k for k, f in flows.items() if f.expires_at <= now]:
        del flows[poll_id]


async def _post_form(kernel: Kernel, url: str, form: dict[str, str], timeout_secs: float) -> tuple[int, dict[str, Any]]:
    """POST a form to GitHub, asking for JSON; a body that is not a JSON object is a bad gateway."""
    import httpx  # the client below already imported it; kept out of start-up

    client = catalog_service(kernel).http_client()
    try:
        response = await client.post(url, data=form, headers={"Accept": "application/json"}, timeout=timeout_secs,
                                     follow_redirects=False)
    except httpx.HTTPError as exc:
        raise BadGateway(f"GitHub could not be reached: {type(exc).__name__}", code="upstream_unreachable") from None
    if len(response.content) > MAX_BODY_BYTES:
        raise BadGateway("GitHub answered an oversized body", code="upstream_bad_response")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadGateway(f"GitHub answered HTTP {response.status_code} without a JSON object",
                         code="upstream_bad_response", details={"upstream_status": response.status_code})
    return response.status_code, body


def _upstream_message(body: dict[str, Any]) -> str:
    text = str(body.get("error_description") or body.get("message") or body.get("error") or "")
    return text[:300]


async def start(kernel: Kernel) -> dict[str, Any]:
    """Begin a device flow; returns ``user_code``, ``verification_uri``, ``poll_id``, ``expires_in``, ``interval``."""
    config = catalog_service(kernel).settings
    flows = _flows(kernel)
    _purge(flows)
    if len(flows) >= MAX_FLOWS:
        raise ServiceUnavailable("too many sign-ins in progress; try again in a few minutes",
                                 code="too_many_flows", headers={"Retry-After": "60"})
    status, body = await _post_form(
        kernel, config.copilot_device_code_url,
        {"client_id": config.copilot_client_id, "scope": config.copilot_scope},
        config.provider_test_timeout_secs,
    )
    required = ("device_code", "user_code", "verification_uri")
    if status != 200 or not all(isinstance(body.get(k), str) and body.get(k) for k in required):
        message = _upstream_message(body) or "no device code in the answer"
        raise BadGateway(f"GitHub refused the device flow (HTTP {status}): {message}", code="upstream_error",
                         details={"upstream_status": status, "upstream_message": message})
    expires_in = _bounded_int(body.get("expires_in"), 900, 60, 3600)
    interval = _bounded_int(body.get("interval"), 5, 1, 120)
    poll_id = secrets.token_urlsafe(24)
    now = time.monotonic()
    flows[poll_id] = DeviceFlow(body["device_code"], interval, now + expires_in, now)
    return {"user_code": str(body["user_code"])[:64], "verification_uri": str(body["verification_uri"])[:500],
            "poll_id": poll_id, "expires_in": expires_in, "interval": interval}


def _bounded_int(value: Any, default: int, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return min(max(number, low), high)


async def poll(kernel: Kernel, poll_id: str, request_id: str = "", actor: str = "api") -> dict[str, Any]:
    """One poll: ``pending`` / ``complete`` / ``expired`` / ``denied`` / ``error``."""
    flows = _flows(kernel)
    flow = flows.get(poll_id)
    if flow is None:
        raise NotFound("unknown or finished poll_id", code="poll_not_found")
    now = time.monotonic()
    if flow.expires_at <= now:
        del flows[poll_id]
        return {"status": "expired"}
    if now < flow.next_poll_at:
        return {"status": "pending", "interval": flow.interval}
    service = catalog_service(kernel)
    config = service.settings
    flow.next_poll_at = now + flow.interval
    status, body = await _post_form(
        kernel, config.copilot_token_url,
        {"client_id": config.copilot_client_id, "device_code": flow.device_code, "grant_type": DEVICE_GRANT},
        config.provider_test_timeout_secs,
    )
    token = body.get("access_token")
    if status == 200 and isinstance(token, str) and token:
        provider = await service.provider_or_404(PROVIDER_ID)
        await asyncio.to_thread(kernel.vault.set, provider.key_env(), token)
        flows.pop(poll_id, None)
        await kernel.audit.record("ProviderKeySet", actor=actor, target=PROVIDER_ID,
                                  detail={"secret": provider.key_env(), "via": "oauth_device_flow"},
                                  request_id=request_id)
        return {"status": "complete", "auth_status": service.auth_status(provider)}
    error = str(body.get("error") or "")
    if error == "authorization_pending":
        return {"status": "pending", "interval": flow.interval}
    if error == "slow_down":
        flow.interval = _bounded_int(body.get("interval"), flow.interval + 5, 1, 120)
        flow.next_poll_at = now + flow.interval
        return {"status": "pending", "interval": flow.interval}
    if error == "expired_token":
        flows.pop(poll_id, None)
        return {"status": "expired"}
    if error == "access_denied":
        flows.pop(poll_id, None)
        return {"status": "denied"}
    return {"status": "error", "error": _upstream_message(body) or f"GitHub answered HTTP {status}"}

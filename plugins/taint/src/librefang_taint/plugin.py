"""Wiring of the taint plugin (hooks only)."""

from __future__ import annotations

from typing import Any

import librefang


@librefang.hookimpl
def register_config(register: Any) -> None:
    from librefang_taint.config import TaintConfig, TaintRules

    register("taint", TaintConfig)
    register("taint_rules", TaintRules)


@librefang.hookimpl
def startup(kernel: Any) -> None:
    from librefang_taint.service import SERVICE_KEY, TaintService

    kernel.services[SERVICE_KEY] = TaintService(kernel)


@librefang.hookimpl
def shutdown(kernel: Any) -> None:
    kernel.services.pop("taint", None)


# optionalhook: the plugin still loads when the runtime (which offers the hook) is not installed.
@librefang.hookimpl(optionalhook=True)
async def before_tool_call(call: Any, context: Any) -> Any:
    service = context.kernel.services.get("taint") if context.kernel is not None else None
    if service is None:
        return None
    finding = service.find(call.name, call.input)
    if finding is None:
        return None
    from librefang_runtime.api import Deny

    return Deny(await service.refuse(finding, call, context))


@librefang.hookimpl
def security_checks(register: Any) -> None:
    register("taint", _security)


def _security(kernel: Any) -> dict[str, Any] | None:
    service = kernel.services.get("taint")
    return service.describe() if service is not None else None

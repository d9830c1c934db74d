"""The sandbox of one kernel (``kernel.services["sandbox"]``): the exec service and the WASM sandbox."""

from __future__ import annotations

from typing import Any

from librefang_sandbox.exec_service import ExecService


class SandboxService:
    """Owns what the plugin runs; started and stopped with the plugin."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.exec = ExecService(kernel, kernel.config.section("exec_policy"))

    async def start(self) -> None:
        """Probe the kernel features the exec sandbox can use."""
        await self.exec.start()

    async def aclose(self) -> None:
        """Kill every process this plugin started."""
        await self.exec.aclose()


def describe_exec(kernel: Any) -> dict[str, Any]:
    """``/api/security`` entry of the subprocess sandbox."""
    service = kernel.services.get("sandbox")
    return service.exec.describe() if service is not None else {"active": False}


def describe_wasm(kernel: Any) -> dict[str, Any]:
    """``/api/security`` entry of the WASM sandbox."""
    service = kernel.services.get("sandbox")
    wasm = getattr(service, "wasm", None)
    return wasm.describe() if wasm is not None else {"active": False}

"""The sandbox of one kernel (``kernel.services["sandbox"]``): the exec service and the WASM sandbox."""

from __future__ import annotations

from typing import Any

from librefang_sandbox.exec_service import ExecService
from librefang_sandbox.wasm import WasmSandbox


class SandboxService:
    """Owns what the plugin runs; started and stopped with the plugin."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.exec = ExecService(kernel, kernel.config.section("exec_policy"))
        self.wasm = WasmSandbox(kernel.config.section("wasm_sandbox"))
        self.wasm_tools: list[str] = []
        self.wasm_tool_errors: dict[str, str] = {}
        self.subscription: Any = None

    async def start(self) -> None:
        """Probe the kernel features the exec sandbox can use; add the configured WASM tools."""
        from librefang_sandbox.wasm_tools import register_configured

        await self.exec.start()
        self.wasm_tools = await register_configured(self)
        # A killed agent's background processes die with it.
        self.subscription = self.kernel.bus.subscribe("agent.killed", maxsize=1000, name="sandbox:agent-killed")
        self.kernel.tasks.spawn("sandbox", self._reap_killed_agents(self.subscription), name="sandbox:agent-killed")

    async def _reap_killed_agents(self, subscription: Any) -> None:
        async for event in subscription:
            agent_id = event.data.get("agent_id")
            if agent_id:
                await self.exec.kill_agent(str(agent_id), "the agent was killed")

    async def aclose(self) -> None:
        """Kill every process this plugin started, take its WASM tools out, stop the epoch timer."""
        from librefang_sandbox.wasm_tools import unregister

        if self.subscription is not None:
            self.subscription.close()
        await self.exec.aclose()
        unregister(self, self.wasm_tools)
        self.wasm.close()

    def describe_wasm(self) -> dict[str, Any]:
        return {**self.wasm.describe(), "active": True, "tools": list(self.wasm_tools),
                "tool_errors": dict(self.wasm_tool_errors),
                "host_calls": {"time_now": "always", "fs_read": "needs file_read", "fs_write": "needs file_write",
                               "fs_list": "needs file_list", "kv_get": "needs memory_recall (+ memory_read scope)",
                               "kv_set": "needs memory_store (+ memory_write scope)",
                               "agent_send": "needs agent_send (+ agent_message)"},
                "tool_backed_host_calls_pass_before_tool_call": True,
                "agent_modules": {"scheme": "wasm", "entry": "handle",
                                  "agent_modules_dir": self.wasm.config.agent_modules_dir,
                                  "paths": "relative, inside the agent's workspace or agent_modules_dir",
                                  "host_calls": "all declared; the agent's capabilities decide"}}


def describe_exec(kernel: Any) -> dict[str, Any]:
    """``/api/security`` entry of the subprocess sandbox."""
    service = kernel.services.get("sandbox")
    return service.exec.describe() if service is not None else {"active": False}


def describe_wasm(kernel: Any) -> dict[str, Any]:
    """``/api/security`` entry of the WASM sandbox."""
    service = kernel.services.get("sandbox")
    return service.describe_wasm() if service is not None else {"active": False}

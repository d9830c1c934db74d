"""The tools this plugin adds to the runtime (``register_tools``): ``shell_exec`` and ``process_*``.

Handlers find the kernel's :class:`~librefang_sandbox.exec_service.ExecService` through the call's
context, so the same definitions serve every kernel.
"""

from __future__ import annotations

from typing import Any

from librefang_runtime.api import Tool, ToolContext, ToolError

COMMAND = {
    "command": {"type": "string", "description": "The command line, e.g. \"ls -la src\" (shell syntax only in "
                                                 "exec_policy mode full)"},
    "argv": {"type": "array", "items": {"type": "string"},
             "description": "The program and its arguments, instead of command"},
    "cwd": {"type": "string", "description": "Working folder relative to your workspace (default: the workspace)"},
}
PROCESS_ID = {"process_id": {"type": "string", "description": "The id process_start returned"}}


def _service(context: ToolContext) -> Any:
    service = context.kernel.services.get("sandbox")
    if service is None:
        raise ToolError("the sandbox plugin is not running")
    return service.exec


def _handler(method: str) -> Any:
    async def handle(data: dict[str, Any], context: ToolContext) -> str:
        return await getattr(_service(context), method)(data, context)

    handle.__name__ = method
    return handle


def exec_tools() -> list[Tool]:
    """``shell_exec`` and the five process tools. Their own limits apply (``[exec_policy]``); the
    runtime's tool timeout is only a backstop, so it is set above the exec policy's range."""
    return [
        Tool("shell_exec", "Run a command in your workspace under the exec policy; returns its exit status "
             "and output.", _handler("shell_exec"),
             {"type": "object", "properties": {**COMMAND, "timeout_secs": {
                 "type": "number", "description": "Shorter time limit than the policy's"}}}, timeout=86_400),
        Tool("process_start", "Start a long-running process in your workspace (returns a process id).",
             _handler("process_start"), {"type": "object", "properties": COMMAND}),
        Tool("process_poll", "Get the new output and the state of one of your processes.",
             _handler("process_poll"), {"type": "object", "properties": PROCESS_ID, "required": ["process_id"]}),
        Tool("process_write", "Write text to the standard input of one of your processes.",
             _handler("process_write"),
             {"type": "object", "properties": {**PROCESS_ID, "data": {"type": "string"},
                                               "close": {"type": "boolean", "description": "Close the input after"}},
              "required": ["process_id", "data"]}),
        Tool("process_kill", "Kill one of your processes (and everything it started).", _handler("process_kill"),
             {"type": "object", "properties": PROCESS_ID, "required": ["process_id"]}),
        Tool("process_list", "List your processes.", _handler("process_list"), {"type": "object", "properties": {}}),
    ]

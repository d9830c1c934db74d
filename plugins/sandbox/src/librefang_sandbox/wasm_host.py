"""Host calls of WASM guests, each checked against the calling agent's capabilities.

A method is granted when the tool declares it (``host_calls``) *and* the agent may do the same thing
with its ordinary tools: ``fs_read`` needs ``file_read`` among the agent's visible tools, ``fs_write``
``file_write``, ``fs_list`` ``file_list``, ``kv_get`` ``memory_recall``, ``kv_set`` ``memory_store``,
``agent_send`` ``agent_send``. ``time_now`` is always granted. Without an agent (a direct invocation)
only ``time_now`` is. File paths stay inside the agent's workspace, as for the built-in file tools.

``kv_get``, ``kv_set`` and ``agent_send`` run the runtime's tool of the same right (the memory plugin's
``memory_recall`` / ``memory_store``, the runtime's ``agent_send``) *through the ``before_tool_call``
policy* (approvals, taint, budgets), so their own checks apply too: KV namespaces against
``capabilities.memory_read`` / ``memory_write``, the target agent against ``capabilities.agent_message``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librefang.fsutil import replace_file

from librefang_sandbox.config import HOST_METHODS

MAX_FILE_BYTES = 1024 * 1024
MAX_LIST_ENTRIES = 1000
NEEDS_TOOL = {"fs_read": "file_read", "fs_write": "file_write", "fs_list": "file_list", "kv_get": "memory_recall",
              "kv_set": "memory_store", "agent_send": "agent_send"}


class HostDenied(Exception):
    """A host call the agent may not make."""


class HostFailed(Exception):
    """A host call that was allowed but failed (bad parameters, missing file)."""


def grants(declared: list[str], visible_tools: list[str] | None, has_workspace: bool) -> dict[str, str | None]:
    """method -> ``None`` when granted, else the reason it is refused."""
    out: dict[str, str | None] = {}
    for method in HOST_METHODS:
        if method not in declared:
            out[method] = f"the WASM module does not declare host call {method!r}"
        elif method == "time_now":
            out[method] = None
        elif visible_tools is None:
            out[method] = f"{method} is only available to an agent"
        elif NEEDS_TOOL[method] not in visible_tools:
            out[method] = f"the agent may not use {NEEDS_TOOL[method]} (its capabilities), so not {method} either"
        elif method.startswith("fs_") and not has_workspace:
            out[method] = f"{method} needs an agent workspace"
        else:
            out[method] = None
    return out


def resolve(workspace: Path, relative: Any) -> Path:
    """A path inside the workspace; :class:`HostFailed` when it would leave it (symlinks resolved)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or len(relative) > 1024:
        raise HostFailed("params.path must be a relative path")
    norm = relative.replace("\\", "/")
    if norm.startswith("/") or ".." in norm.split("/"):
        raise HostFailed("params.path must stay inside the workspace (no absolute paths, no '..')")
    root = workspace.resolve()
    target = (root / norm).resolve()
    if target != root and not target.is_relative_to(root):
        raise HostFailed("params.path leaves the workspace")
    return target


@dataclass
class HostContext:
    """Everything one WASM run's host calls may use. :meth:`__call__` runs in the WASM worker thread."""

    granted: dict[str, str | None]
    max_calls: int
    workspace: Path | None = None
    loop: asyncio.AbstractEventLoop | None = None
    run_tool: Any = None  # async (tool name, input) -> result text, as the calling agent, policy applied
    deadline: float = field(default_factory=lambda: time.monotonic() + 30)
    calls: int = 0
    denied: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, request: bytes) -> bytes:
        try:
            body = json.loads(request)
            if not isinstance(body, dict) or not isinstance(body.get("method"), str):
                raise HostFailed("a host call is {\"method\": ..., \"params\": {...}}")
            result = self.dispatch(body["method"], body.get("params") or {})
            answer: dict[str, Any] = {"ok": result}
        except HostDenied as exc:
            answer = {"error": f"capability denied: {exc}", "denied": True}
        except HostFailed as exc:
            answer = {"error": str(exc)}
        except ValueError:
            answer = {"error": "the host call request is not JSON"}
        return json.dumps(answer).encode()

    def dispatch(self, method: str, params: Any) -> Any:
        """Check and run one host call."""
        self.calls += 1
        if self.calls > self.max_calls:
            raise HostFailed(f"more than {self.max_calls} host calls in one run")
        if method not in self.granted:
            raise HostFailed(f"unknown host method {method[:64]!r}; known: {', '.join(HOST_METHODS)}")
        reason = self.granted[method]
        if reason is not None:
            self.denied.append((method, reason))
            raise HostDenied(reason)
        if not isinstance(params, dict):
            raise HostFailed("params must be an object")
        return getattr(self, "_" + method)(params)

    def _time_now(self, params: dict[str, Any]) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        return {"unix": now.timestamp(), "iso": now.isoformat(timespec="seconds").replace("+00:00", "Z")}

    def _fs_read(self, params: dict[str, Any]) -> str:
        assert self.workspace is not None
        target = resolve(self.workspace, params.get("path"))
        if not target.is_file():
            raise HostFailed(f"no such file: {params.get('path')}")
        with target.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise HostFailed(f"the file is larger than {MAX_FILE_BYTES} bytes")
        return data.decode("utf-8", errors="replace")

    def _fs_write(self, params: dict[str, Any]) -> int:
        assert self.workspace is not None
        content = params.get("content")
        if not isinstance(content, str):
            raise HostFailed("params.content must be a string")
        encoded = content.encode("utf-8")
        if len(encoded) > MAX_FILE_BYTES:
            raise HostFailed(f"at most {MAX_FILE_BYTES} bytes may be written")
        target = resolve(self.workspace, params.get("path"))
        if target.is_dir():
            raise HostFailed("the path is a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_file(target, encoded)  # a symlink at the target is replaced, never followed
        return len(encoded)

    def _fs_list(self, params: dict[str, Any]) -> list[str]:
        assert self.workspace is not None
        target = resolve(self.workspace, params.get("path") or ".")
        if not target.is_dir():
            raise HostFailed(f"no such folder: {params.get('path')}")
        names = []
        for entry in sorted(target.iterdir(), key=lambda p: p.name)[:MAX_LIST_ENTRIES]:
            if not entry.name.startswith(".tmp-"):
                names.append(entry.name + ("/" if entry.is_dir() else ""))
        return names

    def _tool(self, name: str, tool_input: dict[str, Any]) -> str:
        """Run a runtime tool from the WASM worker thread, on the daemon's loop, within the deadline."""
        if self.loop is None or self.run_tool is None:
            raise HostDenied(f"{name} is only available to an agent")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise HostFailed(f"no time left for {name}")
        future = asyncio.run_coroutine_threadsafe(self.run_tool(name, tool_input), self.loop)
        try:
            return future.result(timeout=remaining)
        except TimeoutError:
            future.cancel()
            raise HostFailed(f"{name} did not finish before the WASM deadline") from None
        except Exception as exc:  # the tool's or the policy's refusal reaches the guest as its message
            raise HostFailed(str(exc)[:500]) from None

    @staticmethod
    def _namespace(params: dict[str, Any]) -> dict[str, Any]:
        namespace = params.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            raise HostFailed("params.namespace must be a string")
        return {"namespace": namespace} if namespace else {}

    def _kv_get(self, params: dict[str, Any]) -> str:
        key = params.get("key")
        if not isinstance(key, str):
            raise HostFailed("params.key must be a string")
        return self._tool("memory_recall", {"key": key, **self._namespace(params)})

    def _kv_set(self, params: dict[str, Any]) -> str:
        key = params.get("key")
        if not isinstance(key, str) or "value" not in params:
            raise HostFailed("params.key (string) and params.value are required")
        return self._tool("memory_store", {"key": key, "value": params["value"], **self._namespace(params)})

    def _agent_send(self, params: dict[str, Any]) -> str:
        target, message = params.get("agent"), params.get("message")
        if not isinstance(target, str) or not isinstance(message, str) or not target or len(message) > 100_000:
            raise HostFailed("params.agent and params.message must be strings")
        return self._tool("agent_send", {"agent": target, "message": message})

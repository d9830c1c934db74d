"""``shell_exec`` and the background process tools, on top of the policy (:mod:`commands`) and the
supervised child (:mod:`runner`). One :class:`ExecService` per kernel.

A background process belongs to the agent that started it: another agent can neither see, poll,
write to nor kill it. Every command that runs, and every refusal, is written to the audit chain.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from librefang_agents import api as agents_api
from librefang_runtime.api import ToolContext, ToolError

from librefang_sandbox import landlock, privileges
from librefang_sandbox.cgroup import find_pids_root, sweep_stale
from librefang_sandbox.commands import Plan, Policy, child_environment, effective_policy, plan
from librefang_sandbox.config import ExecPolicyConfig
from librefang_sandbox.process import Limits, Supervisor
from librefang_sandbox.runner import Child, describe_exit, start_child, summary

log = logging.getLogger("librefang.sandbox")
MAX_STDIN_WRITE = 64 * 1024
MAX_KEPT_FINISHED = 32


@dataclass
class Background:
    id: str
    agent_id: str
    command: str
    child: Child


class ExecService:
    """Runs commands for agents under ``[exec_policy]``."""

    def __init__(self, kernel: Any, config: ExecPolicyConfig) -> None:
        self.kernel = kernel
        self.config = config
        self.supervisor = Supervisor(config.supervise_interval_ms / 1000)
        self.landlock_abi = landlock.abi_version() if config.filesystem_confinement else 0
        self.cgroup_root: Path | None = None
        self.drop_capabilities = privileges.dropper() if config.drop_capabilities and privileges.has_capabilities() \
            else None

    async def start(self) -> None:
        """Find a pids cgroup hierarchy to use (and sweep cgroups a crashed daemon left behind)."""
        if self.config.cgroup_pids:
            self.cgroup_root = await asyncio.to_thread(find_pids_root)
            if self.cgroup_root is not None:
                await asyncio.to_thread(sweep_stale, self.cgroup_root)
        self.processes: dict[str, Background] = {}
        self.counts: Counter[str] = Counter()

    @property
    def confined(self) -> bool:
        return self.landlock_abi > 0

    def limits(self, resources: Any = None) -> Limits:
        """The rlimits of a child: ``[exec_policy]``, narrowed by the agent's ``[resources]`` quotas
        (``max_cpu_time_ms``, ``max_memory_bytes``; 0 there means no narrowing)."""
        c = self.config
        cpu, memory = c.cpu_time_secs, c.memory_bytes
        if resources is not None:
            if resources.max_cpu_time_ms > 0:
                cpu = min(cpu, max(1, -(-resources.max_cpu_time_ms // 1000)))
            if resources.max_memory_bytes > 0:
                memory = min(memory, max(16 * 1024 * 1024, resources.max_memory_bytes))
        return Limits(cpu_time_secs=cpu, memory_bytes=memory, file_size_bytes=c.file_size_bytes,
                      open_files=c.open_files, max_processes=c.max_processes)

    async def _agent(self, context: ToolContext) -> tuple[Policy, list[str], Limits]:
        if not context.agent_id or context.workspace is None:
            raise ToolError("commands run in an agent's workspace: call this tool for an agent")
        record = await agents_api.registry(context.kernel).get(context.agent_id)
        manifest = record.parsed()
        caps = agents_api.effective_capabilities(manifest)
        return (effective_policy(self.config, manifest.exec_policy), list(caps.shell),
                self.limits(getattr(manifest, "resources", None)))

    async def _prepare(self, data: dict[str, Any], context: ToolContext) -> tuple[Plan, Policy, dict[str, str],
                                                                                   landlock.Ruleset | None, Limits]:
        policy, patterns, limits = await self._agent(context)
        try:
            checked = await asyncio.to_thread(plan, policy, command=data.get("command"), argv=data.get("argv"),
                                              cwd=data.get("cwd"), workspace=context.workspace,
                                              shell_patterns=patterns)
        except ToolError as exc:
            self.counts["refused"] += 1
            await self.kernel.audit.record("ShellExec", actor=context.agent_id or "anonymous",
                                           target=str(data.get("command") or data.get("argv") or "")[:200],
                                           detail=str(exc), outcome="denied")
            raise
        workspace = await asyncio.to_thread(Path(context.workspace or checked.cwd).resolve)
        env = await asyncio.to_thread(child_environment, self.config, workspace)
        ruleset = None
        if self.confined:
            ruleset = await asyncio.to_thread(landlock.build_ruleset, [str(workspace)],
                                              list(self.config.read_only_paths), self.landlock_abi,
                                              allow_network=self.config.allow_network)
        return checked, policy, env, ruleset, limits

    async def shell_exec(self, data: dict[str, Any], context: ToolContext) -> str:
        """Run one command to completion and return its exit status and output."""
        checked, policy, env, ruleset, limits = await self._prepare(data, context)
        timeout = policy.timeout_secs
        asked = data.get("timeout_secs")
        if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
            timeout = min(timeout, float(asked))
        try:
            child = await start_child(checked.argv, cwd=str(checked.cwd), env=env, limits=limits,
                                      ruleset=ruleset, max_output=self.config.max_output_bytes, overflow="kill",
                                      cgroup_root=self.cgroup_root, drop_capabilities=self.drop_capabilities)
        except OSError as exc:
            raise ToolError(f"could not start {checked.program!r}: {exc.strerror or exc}") from None
        finally:
            if ruleset is not None:
                ruleset.close()
        self.counts["run"] += 1
        await child.run(self.supervisor, timeout, self.config.no_output_timeout_secs)
        if child.killed:
            self.counts["killed"] += 1
        status = child.killed or describe_exit(child.returncode)
        await self.kernel.audit.record("ShellExec", actor=context.agent_id, target=checked.program,
                                       detail={"argv": shlex.join(checked.argv)[:500], "status": status},
                                       outcome="ok" if child.returncode == 0 and not child.killed else "error")
        out = child.take()
        text = f"{status}\n--- stdout ---\n{out['stdout']}"
        if out["stderr"]:
            text += f"\n--- stderr ---\n{out['stderr']}"
        if child.killed or child.returncode != 0:
            raise ToolError(("the command was stopped: " if child.killed else "the command failed: ") + text)
        return text

    # -- background processes ------------------------------------------------------------------
    def _own(self, data: dict[str, Any], context: ToolContext) -> Background:
        entry = self.processes.get(str(data.get("process_id", ""))[:64])
        if entry is None or entry.agent_id != context.agent_id:
            raise ToolError(f"no process {str(data.get('process_id', ''))[:64]!r} of yours")
        return entry

    def _forget_finished(self) -> None:
        finished = [k for k, v in self.processes.items() if v.child.finished.is_set()]
        for key in finished[:max(0, len(finished) - MAX_KEPT_FINISHED)]:
            del self.processes[key]

    async def process_start(self, data: dict[str, Any], context: ToolContext) -> str:
        """Start a long-running process; returns its id for the other process tools."""
        checked, _policy, env, ruleset, limits = await self._prepare(data, context)
        try:
            running = sum(1 for p in self.processes.values() if not p.child.finished.is_set())
            if running >= self.config.max_background_processes:
                raise ToolError(f"{running} background processes are running; the limit is "
                                f"{self.config.max_background_processes} (kill one first)")
            child = await start_child(checked.argv, cwd=str(checked.cwd), env=env, limits=limits,
                                      ruleset=ruleset, max_output=self.config.max_output_bytes, overflow="drop",
                                      stdin=True, cgroup_root=self.cgroup_root,
                                      drop_capabilities=self.drop_capabilities)
        except OSError as exc:
            raise ToolError(f"could not start {checked.program!r}: {exc.strerror or exc}") from None
        finally:
            if ruleset is not None:
                ruleset.close()
        self.counts["started"] += 1
        self._forget_finished()
        process_id = uuid.uuid4().hex[:12]
        self.processes[process_id] = Background(process_id, context.agent_id, shlex.join(checked.argv), child)
        child.start(self.supervisor, self.config.process_timeout_secs, None)
        await self.kernel.audit.record("ProcessStart", actor=context.agent_id, target=checked.program,
                                       detail={"process_id": process_id, "argv": shlex.join(checked.argv)[:500]})
        return f"started process {process_id} (pid {child.pid})"

    async def process_poll(self, data: dict[str, Any], context: ToolContext) -> str:
        """New output of a background process since the last poll, and its state."""
        entry = self._own(data, context)
        out = entry.child.take()
        state = summary(entry.child)
        head = f"process {entry.id}: " + ("running" if state["running"] else (entry.child.killed or state["status"]))
        if entry.child.dropped_bytes:
            head += f" ({entry.child.dropped_bytes} bytes of older output were dropped)"
        return f"{head}\n--- stdout ---\n{out['stdout']}" + (f"\n--- stderr ---\n{out['stderr']}" if out["stderr"] else "")

    async def process_write(self, data: dict[str, Any], context: ToolContext) -> str:
        """Write to the standard input of a background process (optionally closing it)."""
        entry = self._own(data, context)
        text = data.get("data", "")
        encoded = text.encode("utf-8") if isinstance(text, str) else b""
        if len(encoded) > MAX_STDIN_WRITE:
            raise ToolError(f"at most {MAX_STDIN_WRITE} bytes may be written at once")
        stdin = entry.child.proc.stdin
        if stdin is None or entry.child.finished.is_set() or stdin.is_closing():
            raise ToolError(f"process {entry.id} no longer accepts input")
        try:
            stdin.write(encoded)
            await asyncio.wait_for(stdin.drain(), 10)
            if data.get("close"):
                stdin.close()
        except (OSError, TimeoutError) as exc:
            raise ToolError(f"could not write to process {entry.id}: {type(exc).__name__}") from None
        return f"wrote {len(encoded)} bytes to process {entry.id}" + (" and closed its input" if data.get("close") else "")

    async def process_kill(self, data: dict[str, Any], context: ToolContext) -> str:
        """Kill a background process and its whole tree."""
        entry = self._own(data, context)
        await entry.child.kill()
        await self.kernel.audit.record("ProcessKill", actor=context.agent_id, target=entry.id)
        return f"process {entry.id}: {entry.child.killed or describe_exit(entry.child.returncode)}"

    async def process_list(self, data: dict[str, Any], context: ToolContext) -> str:
        """The calling agent's background processes."""
        lines = []
        for entry in self.processes.values():
            if entry.agent_id != context.agent_id:
                continue
            state = summary(entry.child)
            lines.append(f"{entry.id} pid={state['pid']} {'running' if state['running'] else state['status']}"
                         f"{' (' + entry.child.killed + ')' if entry.child.killed else ''}: {entry.command[:200]}")
        return "\n".join(lines) or "(no processes)"

    async def kill_agent(self, agent_id: str, reason: str) -> int:
        """Kill every running background process of one agent; returns how many."""
        killed = 0
        for entry in list(self.processes.values()):
            if entry.agent_id == agent_id and not entry.child.finished.is_set():
                await entry.child.kill(reason)
                killed += 1
        return killed

    async def aclose(self) -> None:
        """Kill every background process (plugin shutdown)."""
        for entry in list(self.processes.values()):
            await entry.child.kill("daemon shutting down")
        self.processes.clear()
        await self.supervisor.aclose()

    def describe(self) -> dict[str, Any]:
        """The live configuration for ``/api/security``."""
        c = self.config
        return {
            "active": c.mode != "deny",
            "mode": c.mode,
            "safe_bins": list(c.safe_bins) if c.mode == "allowlist" else [],
            "shell_syntax": c.mode == "full",
            "environment": {"cleared": True, "passed": ["PATH", "HOME", "TMPDIR", "TMP", "TEMP", *c.env_passthrough],
                            "never_passed_names_containing": ["KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL",
                                                              "PRIVATE"]},
            "working_directory": "agent workspace",
            "timeouts": {"wall_clock_secs": c.timeout_secs, "no_output_secs": c.no_output_timeout_secs,
                         "background_process_secs": c.process_timeout_secs},
            "max_output_bytes": c.max_output_bytes,
            "rlimits": {"cpu_time_secs": c.cpu_time_secs, "address_space_bytes": c.memory_bytes,
                        "file_size_bytes": c.file_size_bytes, "open_files": c.open_files,
                        "processes": c.max_processes},
            "process_count_supervision": {"interval_ms": c.supervise_interval_ms, "max_processes": c.max_processes,
                                          "rlimit_nproc_enforced": not _is_root()},
            "pids_cgroup": {"enabled": self.cgroup_root is not None,
                            "hierarchy": str(self.cgroup_root) if self.cgroup_root else None},
            "tree_kill": "new session per command; killpg + /proc scan of session, descendants and processes "
                         "seen in the tree" + (" + every task of the command's pids cgroup" if self.cgroup_root else ""),
            "filesystem_confinement": {"enabled": self.confined, "mechanism": "landlock",
                                       "abi": self.landlock_abi, "read_only_paths": list(c.read_only_paths),
                                       "writable": "agent workspace",
                                       "signals_and_abstract_sockets_scoped": self.confined and self.landlock_abi >= 6},
            "capabilities_dropped": self.drop_capabilities is not None,
            "daemon_is_root": _is_root(),
            "network": {"allowed": c.allow_network,
                        "enforced": not c.allow_network and self.confined and self.landlock_abi >= 4},
            "background_processes": {"running": sum(1 for p in self.processes.values()
                                                    if not p.child.finished.is_set()),
                                     "limit": c.max_background_processes},
            "commands_run": self.counts["run"] + self.counts["started"],
            "commands_refused": self.counts["refused"],
            "commands_killed": self.counts["killed"],
        }


def _is_root() -> bool:
    import os

    return os.getuid() == 0

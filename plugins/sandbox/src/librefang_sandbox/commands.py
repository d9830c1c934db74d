"""Deciding whether and how a command may run: the exec policy, the agent's capabilities, the argv,
the working directory and the child's environment.

Commands run from an argv, never a shell string, except in ``full`` mode where a ``command`` line is
handed to ``/bin/sh -c`` on purpose. In ``allowlist`` mode the program must be a bare name listed in
``safe_bins`` (looked up on the policy's PATH, never the daemon's), shell syntax is refused, and path
arguments must stay inside the workspace.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from librefang_runtime.api import ToolError

from librefang_sandbox.config import ExecPolicyConfig, secret_name

MODES = ("deny", "allowlist", "full")
# Characters that mean something to a shell: refused outside full mode, so nobody is misled into
# thinking a pipe or a redirection happened.
SHELL_METACHARACTERS = frozenset(";|&$`<>()\n\r")
MAX_ARGS = 1000


@dataclass(frozen=True)
class Policy:
    """The exec policy in force for one agent (global ``[exec_policy]`` narrowed by its manifest)."""

    mode: str
    safe_bins: tuple[str, ...]
    timeout_secs: float
    config: ExecPolicyConfig


def effective_policy(config: ExecPolicyConfig, manifest_policy: Any) -> Policy:
    """Combine ``[exec_policy]`` with a manifest's ``exec_policy`` (a mode name or a table with
    ``mode``, ``safe_bins``, ``timeout_secs``). A manifest can only narrow: the stricter mode wins and
    its ``safe_bins`` are intersected with the global list."""
    mode, bins, timeout = config.mode, tuple(config.safe_bins), config.timeout_secs
    if isinstance(manifest_policy, str):
        manifest_policy = {"mode": manifest_policy}
    if isinstance(manifest_policy, dict):
        wanted = manifest_policy.get("mode")
        if isinstance(wanted, str):
            # An unknown mode name in a manifest fails closed.
            rank = MODES.index(wanted) if wanted in MODES else 0
            mode = MODES[min(MODES.index(mode), rank)]
        agent_bins = manifest_policy.get("safe_bins")
        if isinstance(agent_bins, list):
            bins = tuple(b for b in bins if b in agent_bins)
        agent_timeout = manifest_policy.get("timeout_secs")
        if isinstance(agent_timeout, int | float) and not isinstance(agent_timeout, bool) and agent_timeout > 0:
            timeout = min(timeout, float(agent_timeout))
    return Policy(mode=mode, safe_bins=bins, timeout_secs=timeout, config=config)


@dataclass(frozen=True)
class Plan:
    """A command that passed every check: the argv to execute and where."""

    argv: list[str]
    cwd: Path
    program: str


def resolve_cwd(workspace: Path | None, relative: str | None) -> Path:
    """The working directory: the workspace, or a folder inside it (symlinks resolved)."""
    if workspace is None:
        raise ToolError("commands run in an agent's workspace: call this tool for an agent")
    root = workspace.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not relative or relative in (".", "./"):
        return root
    if "\x00" in relative or len(relative) > 1024:
        raise ToolError("invalid cwd")
    target = (root / relative).resolve()
    if target != root and not target.is_relative_to(root):
        raise ToolError("cwd leaves the agent workspace")
    if not target.is_dir():
        raise ToolError(f"no such folder in the workspace: {relative}")
    return target


def _check_path_argument(arg: str, cwd: Path, root: Path) -> None:
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    if value.startswith("~"):
        raise ToolError(f"argument {arg[:100]!r}: '~' paths are not allowed")
    candidate = cwd / value
    # A path-like argument, or any argument naming an existing entry (a symlink in the workspace
    # may point anywhere), must resolve inside the workspace.
    if value.startswith("/") or ".." in value.replace("\\", "/").split("/") or (
            value and not value.startswith("-") and os.path.lexists(candidate)):
        target = Path(os.path.normpath(candidate)).resolve()
        if target != root and not target.is_relative_to(root):
            raise ToolError(f"argument {arg[:100]!r} points outside the agent workspace")


def _argv_from(command: Any, argv: Any, max_chars: int) -> tuple[list[str] | None, str | None]:
    if argv is not None:
        if not isinstance(argv, list) or not argv or len(argv) > MAX_ARGS:
            raise ToolError(f"argv must be a non-empty list of at most {MAX_ARGS} strings")
        if not all(isinstance(a, str) and "\x00" not in a for a in argv):
            raise ToolError("argv entries must be strings without NUL bytes")
        if sum(len(a) for a in argv) > max_chars:
            raise ToolError(f"the command is longer than {max_chars} characters")
        return list(argv), None
    if not isinstance(command, str) or not command.strip():
        raise ToolError("give a command (string) or argv (list of strings)")
    if len(command) > max_chars or "\x00" in command:
        raise ToolError(f"the command must be at most {max_chars} characters, without NUL bytes")
    return None, command


def shell_allowed(patterns: list[str], program: str, line: str) -> bool:
    """Whether the agent's ``capabilities.shell`` patterns cover this program or command line."""
    return any(fnmatchcase(program, p) or fnmatchcase(line, p) for p in patterns)


def plan(policy: Policy, *, command: Any = None, argv: Any = None, cwd: Any = None,
         workspace: Path | None, shell_patterns: list[str]) -> Plan:
    """Check a requested command; :class:`ToolError` saying why when it may not run."""
    if policy.mode == "deny":
        raise ToolError("running commands is disabled ([exec_policy] mode = \"deny\")")
    args, line = _argv_from(command, argv, policy.config.max_command_chars)
    directory = resolve_cwd(workspace, cwd if isinstance(cwd, str) else None)
    if policy.mode == "full" and line is not None:
        program = (shlex.split(line, posix=True) or [""])[0] if _splittable(line) else line.split()[0]
        if not shell_allowed(shell_patterns, os.path.basename(program), line):
            raise ToolError(f"capabilities.shell does not allow {program[:100]!r}")
        return Plan(argv=["/bin/sh", "-c", line], cwd=directory, program="/bin/sh")
    if line is not None:
        bad = sorted(set(line) & SHELL_METACHARACTERS)
        if bad:
            raise ToolError(f"shell syntax ({' '.join(repr(c) for c in bad)}) is only allowed with "
                            "[exec_policy] mode = \"full\"; give a single command")
        try:
            args = shlex.split(line, posix=True)
        except ValueError as exc:
            raise ToolError(f"cannot parse the command: {exc}") from None
        if not args:
            raise ToolError("empty command")
    assert args is not None
    name = args[0]
    joined = shlex.join(args)
    if policy.mode == "allowlist":
        if "/" in name:
            raise ToolError("give the program by name (it is looked up on the exec policy's PATH)")
        if name not in policy.safe_bins:
            raise ToolError(f"{name[:100]!r} is not in [exec_policy] safe_bins")
        root = (workspace or directory).resolve()
        for arg in args[1:]:
            _check_path_argument(arg, directory, root)
    if not shell_allowed(shell_patterns, os.path.basename(name), joined):
        raise ToolError(f"capabilities.shell does not allow {name[:100]!r}")
    found = shutil.which(name, path=policy.config.path) if "/" not in name else name
    if found is None:
        raise ToolError(f"program {name[:100]!r} not found on the exec policy's PATH")
    return Plan(argv=[found, *args[1:]], cwd=directory, program=name)


def _splittable(line: str) -> bool:
    try:
        return bool(shlex.split(line, posix=True))
    except ValueError:
        return False


def child_environment(config: ExecPolicyConfig, workspace: Path) -> dict[str, str]:
    """The whole environment of a child: nothing inherited but the pass-through list, and never a
    variable whose name looks like a credential (checked again here, whatever the config says)."""
    tmp = workspace / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {"PATH": config.path, "HOME": str(workspace), "TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)}
    for name in config.env_passthrough:
        value = os.environ.get(name)
        if value is not None and not secret_name(name):
            env[name] = value
    return {k: v for k, v in env.items() if not secret_name(k)}

"""Running a child process under limits, and killing its whole tree.

Every child starts in a new session (``start_new_session``: its own process group and session id
equal to its pid) with rlimits set between fork and exec (CPU time, address space, file size, open
files, no core dumps, and the process count when the daemon is not root) and, when available, the
Landlock ruleset. ``RLIMIT_NPROC`` is not enforced for root, so the process count is also
*supervised*: :class:`Supervisor` counts the live members of each watched tree (same session, or a
descendant of a member) every few milliseconds and kills a tree that grows past its limit. Killing a
tree repeats ``killpg`` plus a kill of every member found by a ``/proc`` scan until none is left, so a
fork bomb racing the kill is caught too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from librefang_sandbox.landlock import Ruleset

log = logging.getLogger("librefang.sandbox.process")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one child process (see ``[exec_policy]``)."""

    cpu_time_secs: int
    memory_bytes: int
    file_size_bytes: int
    open_files: int
    max_processes: int


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    session: int
    uid: int
    start: int  # start time in clock ticks: (pid, start) names a process even after pid reuse


def scan_processes(with_uid: bool = False) -> list[ProcInfo]:
    """Every live (not zombie) process of the machine, from ``/proc`` (``uid`` only ``with_uid``;
    it costs a stat per process)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
            uid = os.stat(f"/proc/{name}").st_uid if with_uid else -1
        except OSError:
            continue  # exited while we looked
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        rest = raw[raw.rfind(b")") + 2:].split()
        if len(rest) < 20 or rest[0] in (b"Z", b"X"):
            continue
        found.append(ProcInfo(pid=int(name), ppid=int(rest[1]), session=int(rest[3]), uid=uid, start=int(rest[19])))
    return found


def tree_members(session: int, table: list[ProcInfo], known: dict[int, int] | None = None) -> set[int]:
    """Pids of the tree started as session ``session``: its members, every descendant of one (a child
    that called ``setsid`` itself is still found through its parent), and the processes seen in the
    tree before (``known``: pid -> start time), which finds one whose parent has exited since."""
    members = {p.pid for p in table if p.session == session}
    if known:
        members |= {p.pid for p in table if known.get(p.pid) == p.start}
    children: dict[int, list[int]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p.pid)
    stack = list(members)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in members:
                members.add(child)
                stack.append(child)
    return members


def kill_tree(session: int, known: dict[int, int] | None = None, cgroup: Any = None, rounds: int = 50) -> int:
    """SIGKILL every process of the tree ``session`` (and of its ``cgroup``, when it has one) until
    none is left; returns how many were hit."""
    hit = 0
    for round_number in range(rounds):
        try:
            os.killpg(session, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if cgroup is not None:
            # The cgroup holds every descendant, however it detached; /proc is walked only once, at the
            # end, for anything that left the cgroup.
            members = set(cgroup.pids())
            if not members and round_number < rounds - 1:
                members = tree_members(session, scan_processes(), known)
                if not members:
                    return hit
        else:
            members = tree_members(session, scan_processes(), known)
        if not members:
            return hit
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
                hit += 1
            except (ProcessLookupError, PermissionError):
                pass
    return hit


def preexec(limits: Limits, ruleset: Ruleset | None, nproc: int | None, cgroup: Any = None,
            drop_capabilities: Callable[[], None] | None = None) -> Callable[[], None]:
    """The function run in the child between fork and exec (keep it to system calls)."""
    cpu = limits.cpu_time_secs
    procs_file = cgroup.procs_file if cgroup is not None else None

    def apply() -> None:
        if procs_file is not None:
            # Join the command's pids cgroup first, so every later fork is counted by the kernel.
            fd = os.open(procs_file, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        # Soft limit sends SIGXCPU, the hard one a second later SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if ruleset is not None:
            ruleset.restrict_self()
        if drop_capabilities is not None:
            drop_capabilities()

    return apply


def nproc_limit(max_processes: int) -> int | None:
    """RLIMIT_NPROC for a child: it counts every process of the real user, so it is the user's current
    count plus the allowance. ``None`` for root, where the kernel does not enforce it."""
    uid = os.getuid()
    if uid == 0:
        return None
    # One more than the allowance: the supervisor, which names the violation, must see the tree pass it.
    return sum(1 for p in scan_processes(with_uid=True) if p.uid == uid) + max_processes + 1


async def spawn(argv: list[str], *, cwd: str, env: dict[str, str], limits: Limits, ruleset: Ruleset | None,
                stdin: bool = False, cgroup: Any = None,
                drop_capabilities: Callable[[], None] | None = None) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new session under ``limits`` (stdout and stderr piped)."""
    nproc = await asyncio.to_thread(nproc_limit, limits.max_processes)
    return await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, preexec_fn=preexec(limits, ruleset, nproc, cgroup, drop_capabilities), close_fds=True,
    )


@dataclass
class Watch:
    session: int
    max_processes: int
    on_violation: Callable[[int], Any]
    cgroup: Any = None
    peak: int = 0
    tripped: bool = False
    known: dict[int, int] = field(default_factory=dict)


@dataclass
class Supervisor:
    """Counts the processes of every watched tree on one timer and kills a tree over its limit."""

    interval: float
    watches: dict[int, Watch] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    scans: int = 0

    def watch(self, session: int, max_processes: int, on_violation: Callable[[int], Any],
              cgroup: Any = None) -> Watch:
        """Start watching tree ``session``; ``on_violation(count)`` is called once if it exceeds the
        limit (or, with a pids ``cgroup``, once the kernel refused a fork at the limit)."""
        item = Watch(session, max_processes, on_violation, cgroup)
        self.watches[session] = item
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="sandbox:supervisor")
        return item

    def unwatch(self, session: int) -> None:
        self.watches.pop(session, None)

    async def _run(self) -> None:
        while self.watches:
            # A /proc scan costs ~60 us per process here; trees in a pids cgroup need none.
            table: list[ProcInfo] = []
            if any(w.cgroup is None for w in self.watches.values()):
                table = await asyncio.to_thread(scan_processes)
                self.scans += 1
            starts = {p.pid: p.start for p in table}
            for item in list(self.watches.values()):
                refused = 0
                if item.cgroup is not None:
                    count, refused = item.cgroup.current(), item.cgroup.refused()
                else:
                    members = tree_members(item.session, table, item.known)
                    item.known.update((pid, starts[pid]) for pid in members if pid in starts)
                    count = len(members)
                item.peak = max(item.peak, count)
                if (count > item.max_processes or refused) and not item.tripped:
                    item.tripped = True
                    log.warning("process tree %d has %d processes (limit %d, forks refused %d): killing it",
                                item.session, count, item.max_processes, refused)
                    # Report first: the owner must know why its process died before it sees the exit.
                    item.on_violation(count)
                    await asyncio.to_thread(kill_tree, item.session, item.known, item.cgroup)
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop the timer (the watched trees are killed by their owners)."""
        self.watches.clear()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None

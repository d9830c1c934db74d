"""One supervised child process: output pumps with a cap, wall-clock and no-output timeouts, the
process-count watch, and a kill of the whole tree however it ends (exit, timeout, limit, cancel).

Nothing a command started may outlive it: when the first process exits, whatever it left running in
its tree is killed too.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librefang_sandbox.cgroup import PidsCgroup
from librefang_sandbox.landlock import Ruleset
from librefang_sandbox.process import Limits, Supervisor, kill_tree, spawn

STREAMS = ("stdout", "stderr")


def describe_exit(code: int | None) -> str:
    """``exit code 3`` or ``killed by SIGXCPU`` for a returncode."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    """A started child process and everything known about it."""

    argv: list[str]
    proc: asyncio.subprocess.Process
    limits: Limits
    max_output: int
    overflow: str  # "kill" (shell_exec) or "drop" (oldest unread output, background processes)
    started: float = field(default_factory=time.time)
    killed: str | None = None
    output: dict[str, bytearray] = field(default_factory=lambda: {s: bytearray() for s in STREAMS})
    total_bytes: int = 0
    dropped_bytes: int = 0
    last_output: float = field(default_factory=time.monotonic)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    peak_processes: int = 0
    cgroup: PidsCgroup | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def kept(self) -> int:
        return sum(len(b) for b in self.output.values())

    def stop(self, reason: str) -> None:
        """Ask for the tree to be killed (the first reason given is the one reported)."""
        if self.killed is None:
            self.killed = reason
        self._stop.set()

    def take(self) -> dict[str, str]:
        """The output not yet taken, decoded, and forget it (``process_poll``)."""
        out = {s: self.output[s].decode("utf-8", errors="replace") for s in STREAMS}
        for buffer in self.output.values():
            buffer.clear()
        return out

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        buffer = self.output[name]
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            self.last_output = time.monotonic()
            self.total_bytes += len(chunk)
            room = self.max_output - self.kept()
            if len(chunk) <= room:
                buffer.extend(chunk)
                continue
            if self.overflow == "kill":
                buffer.extend(chunk[:max(room, 0)])
                self.stop(f"output limit exceeded (more than {self.max_output} bytes)")
                return
            # Background process: keep the newest output, count what was dropped.
            buffer.extend(chunk)
            excess = self.kept() - self.max_output
            for other in (self.output["stdout"], self.output["stderr"], buffer):
                cut = min(excess, len(other))
                del other[:cut]
                excess -= cut
                self.dropped_bytes += cut

    async def _watchdog(self, limit: float, idle_limit: float | None) -> None:
        deadline = time.monotonic() + limit
        # Short commands are watched closely; long-running background processes need no 50 ms timer.
        tick = min(0.05 if limit <= 600 else 0.5, limit / 4)
        while True:
            await asyncio.sleep(tick)
            if self.proc.returncode is not None:
                # The first process exited. (Process.wait() would also wait for the pipes, which a
                # leftover child can hold open forever.)
                return
            now = time.monotonic()
            if now >= deadline:
                self.stop(f"timeout: still running after {limit:g} seconds")
                return
            if idle_limit is not None and now - self.last_output >= idle_limit:
                self.stop(f"no output for {idle_limit:g} seconds")
                return

    async def run(self, supervisor: Supervisor, limit: float, idle_limit: float | None) -> None:
        """Supervise until the first process exits or a limit trips, then kill the whole tree."""
        session = self.proc.pid

        def violation(count: int) -> None:
            self.stop(f"process limit exceeded (limit {self.limits.max_processes}, {count} at the kill)")

        watch = supervisor.watch(session, self.limits.max_processes, violation, self.cgroup)
        pumps = asyncio.gather(*(self._pump(s, getattr(self.proc, s)) for s in STREAMS))
        waits = [asyncio.ensure_future(self.proc.wait()), asyncio.ensure_future(self._stop.wait()),
                 asyncio.ensure_future(self._watchdog(limit, idle_limit))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.to_thread(kill_tree, session, watch.known, self.cgroup)
            # Not Process.wait(): it also waits for the pipes, which a process that escaped the kill
            # would hold open forever. The return code is known as soon as the first process exits.
            for _ in range(200):
                if self.proc.returncode is not None:
                    break
                await asyncio.sleep(0.025)
            try:
                # Pipes close once every holder is dead; the kill above made sure of that.
                await asyncio.wait_for(asyncio.shield(pumps), 5)
            except TimeoutError:
                pumps.cancel()
                self._close_transport()
        except asyncio.CancelledError:
            # A cancelled tool call (turn stopped, tool timeout) must not leave its processes behind.
            kill_tree(session, watch.known, self.cgroup)
            pumps.cancel()
            self.stop("cancelled")
            raise
        finally:
            for waiter in waits:
                waiter.cancel()
            self.peak_processes = watch.peak
            supervisor.unwatch(session)
            if self.cgroup is not None:
                self.cgroup.remove()
            self.finished.set()

    def _close_transport(self) -> None:
        # Someone outside the tree still holds our pipes: stop reading and release them, or the
        # transport (and its file descriptors) would live as long as that process.
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()

    def start(self, supervisor: Supervisor, limit: float, idle_limit: float | None) -> asyncio.Task[None]:
        """Supervise in a task (background processes)."""
        self._task = asyncio.get_running_loop().create_task(self.run(supervisor, limit, idle_limit),
                                                            name=f"sandbox:process:{self.pid}")
        return self._task

    async def kill(self, reason: str = "killed on request") -> None:
        """Kill the tree and wait until the supervision ended."""
        self.stop(reason)
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=10)


async def start_child(argv: list[str], *, cwd: str, env: dict[str, str], limits: Limits,
                      ruleset: Ruleset | None, max_output: int, overflow: str, stdin: bool = False,
                      cgroup_root: Path | None = None, drop_capabilities: Any = None) -> Child:
    """Spawn ``argv`` (see :func:`librefang_sandbox.process.spawn`), in a fresh pids cgroup under
    ``cgroup_root`` when given, and wrap it in a :class:`Child`."""
    cgroup = None
    if cgroup_root is not None:
        cgroup = await asyncio.to_thread(PidsCgroup.create, cgroup_root, limits.max_processes)
    try:
        proc = await spawn(argv, cwd=cwd, env=env, limits=limits, ruleset=ruleset, stdin=stdin, cgroup=cgroup,
                           drop_capabilities=drop_capabilities)
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        raise
    return Child(argv=argv, proc=proc, limits=limits, max_output=max_output, overflow=overflow, cgroup=cgroup)


def summary(child: Child) -> dict[str, Any]:
    """JSON-able state of a child (for process_list and process_poll)."""
    return {
        "pid": child.pid,
        "running": child.returncode is None and not child.finished.is_set(),
        "status": describe_exit(child.returncode),
        "killed": child.killed,
        "output_bytes": child.total_bytes,
        "dropped_bytes": child.dropped_bytes,
        "started": child.started,
    }

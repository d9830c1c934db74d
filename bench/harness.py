"""Measurement primitives of the benchmark: launch a server, time its first 200, read its RSS,
drive load at it from a separate process. Used by ``bench/run.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HEALTH = "/api/health"
START_TIMEOUT = 60.0


@dataclass
class Target:
    """One server under test: how to launch it and what the load generator sends it."""

    key: str
    label: str
    argv: list[str]  # the port is appended as ``--port P``
    env: dict[str, str]
    log_dir: Path
    load_headers: list[str] = field(default_factory=list)

    def command(self, port: int) -> list[str]:
        return [*self.argv, "--port", str(port)]


@dataclass
class Running:
    """A launched server process."""

    target: Target
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    launched_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(target: Target, port: int | None = None) -> Running:
    """Start the target's process on a free port (its output goes to a log file)."""
    port = port or free_port()
    target.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = target.log_dir / f"{target.key}-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child holds it; closed when we return
    try:
        launched_at = time.perf_counter()
        proc = subprocess.Popen(
            target.command(port), env=target.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
        )
    finally:
        log.close()
    return Running(target, proc, port, log_path, launched_at)


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One GET over a fresh connection: (status, lower-cased headers, body)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    head_lines = head.decode("latin-1").split("\r\n")
    status = int(head_lines[0].split(" ", 2)[1])
    parsed = {}
    for line in head_lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return status, parsed, body


def wait_ready(running: Running, timeout: float = START_TIMEOUT) -> float:
    """Poll until the first 200 from the health route; seconds since launch."""
    deadline = running.launched_at + timeout
    request = f"GET {HEALTH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while True:
        now = time.perf_counter()
        if now > deadline:
            stop(running)
            raise RuntimeError(f"{running.target.key} gave no 200 within {timeout:.0f} s; log:\n{tail(running.log_path)}")
        if running.proc.poll() is not None:
            raise RuntimeError(
                f"{running.target.key} exited with {running.proc.returncode} before serving; log:\n{tail(running.log_path)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", running.port), timeout=2.0) as sock:
                sock.sendall(request)
                first = sock.recv(64)
            if first.startswith(b"HTTP/1.1 200"):
                return time.perf_counter() - running.launched_at
        except OSError:
            pass
        time.sleep(0.005)  # 5 ms polling: fine-grained, and cheap for the process starting up


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from ``/proc/<pid>/status`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(running: Running, timeout: float = 15.0) -> None:
    """SIGTERM (graceful), then SIGKILL after ``timeout``."""
    proc = running.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cold_start(target: Target, settle: float) -> dict[str, float]:
    """Launch, time the first 200 (and the CPU the process used until then: a figure the noise of
    a shared machine disturbs less than wall time), wait ``settle`` seconds, read the idle RSS, stop."""
    running = launch(target)
    try:
        seconds = wait_ready(running)
        cpu = cpu_seconds(running.proc.pid)
        time.sleep(settle)
        rss = rss_mb(running.proc.pid)
    finally:
        stop(running)
    return {"seconds": seconds, "cpu_s": cpu, "rss_mb": rss}


# -- load -----------------------------------------------------------------------------------------

def pick_loadgen(choice: str) -> str:
    """``wrk`` when asked for or (``auto``) when installed, else the bundled Python client."""
    if choice == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("--loadgen wrk asked for, but wrk is not installed (apt-get install wrk)")
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return choice


def run_load(loadgen: str, url: str, connections: int, duration: float, headers: list[str]) -> dict[str, Any]:
    """Drive load from a separate process; {"rps", "requests", "non_2xx", "errors"}."""
    if loadgen == "wrk":
        return _run_wrk(url, connections, duration, headers)
    argv = [sys.executable, str(BENCH_DIR / "loadgen.py"), url, "-c", str(connections), "-d", str(duration)]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    result = json.loads(out)
    non_2xx = sum(n for status, n in result["statuses"].items() if not status.startswith("2"))
    return {"rps": result["rps"], "requests": result["requests"], "non_2xx": non_2xx, "errors": result["errors"]}


def _run_wrk(url: str, connections: int, duration: float, headers: list[str]) -> dict[str, Any]:
    # One wrk thread: it is far cheaper than the server, so one core is left to the server.
    seconds = max(1, round(duration))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    return {"rps": rps, "requests": requests, "non_2xx": int(non.group(1)) if non else 0, "errors": errors}


# -- machine and build facts ------------------------------------------------------------------------

def machine_facts() -> dict[str, Any]:
    """nproc, CPU model, Python, OS, package versions and the load average when the run began."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("quart", "hypercorn", "librefang"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "wrk": shutil.which("wrk") is not None,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def compile_bytecode() -> dict[str, Any]:
    """Compile the workspace sources (and any site-packages module lacking a .pyc) so that both
    servers start from bytecode: with PYTHONDONTWRITEBYTECODE=1 nothing else would write it."""
    import sysconfig

    sources = [ROOT / "core" / "src", BENCH_DIR] + sorted(p for p in (ROOT / "plugins").glob("*/src") if p.is_dir())
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, sources)], check=False,
                   stdout=subprocess.DEVNULL)
    site = Path(sysconfig.get_paths()["purelib"])
    missing = _missing_pyc(site)
    if missing:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(site)], check=False,
                       stdout=subprocess.DEVNULL)
    return {
        "workspace_sources": [str(p.relative_to(ROOT)) for p in sources],
        "site_packages_missing_pyc_before": missing,
        "site_packages_missing_pyc_after": _missing_pyc(site) if missing else 0,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _missing_pyc(folder: Path) -> int:
    import importlib.util

    missing = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                if not os.path.exists(importlib.util.cache_from_source(path)):
                    missing += 1
    return missing

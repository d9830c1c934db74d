"""A real daemon process for the reliability harness: ``python -m librefang start --foreground``
on a free 127.0.0.1 port with a temporary home, every installed plugin, an API key, and the
providers aimed at a fake LLM server. Used by the tests in this folder and by ``bench/load.py`` and
``bench/soak.py`` (so a benchmark measures exactly what the tests exercise).

The process is started and killed by pid only: ``kill()`` sends SIGKILL (a crash), ``stop()``
asks for a graceful shutdown (SIGTERM) and falls back to SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "lf-reliability-key-0123456789abcdef"
PROVIDER_KEY = "sk-reliability-fake-0123456789"
START_TIMEOUT = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def daemon_config(fake_llm_url: str | None, extra: str = "") -> str:
    """config.toml of a harness daemon: an API key, no default agent, providers on the fake server."""
    text = f'api_key = "{API_KEY}"\nlog_level = "warning"\n\n[agents]\nspawn_default_agent = false\n\n'
    if fake_llm_url:
        text += (
            "[providers]\nretry_base_delay_ms = 5\n"
            f'provider_urls = {{ openai = "{fake_llm_url}/v1", anthropic = "{fake_llm_url}" }}\n\n'
        )
    return text + extra


class Daemon:
    """One daemon home; :meth:`start` may be called again after :meth:`kill` (same home, same port)."""

    def __init__(self, home: Path, *, fake_llm_url: str | None = None, extra_config: str = "",
                 port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "config.toml"
        if not config.exists():
            config.write_text(daemon_config(fake_llm_url, extra_config))
        base = {k: v for k, v in os.environ.items() if not k.startswith("LIBREFANG_")}
        base.update(LIBREFANG_HOME=str(self.home), LIBREFANG_VAULT_KEY="00" * 32,
                    OPENAI_API_KEY=PROVIDER_KEY, ANTHROPIC_API_KEY=PROVIDER_KEY)
        base.update(env or {})
        self.env = base

    @property
    def headers(self) -> dict[str, str]:
        """The API key header (a fresh dict: some clients add their own headers to the one passed)."""
        return {"Authorization": f"Bearer {API_KEY}"}

    @property
    def log_path(self) -> Path:
        return self.home / f"harness-daemon-{self.starts}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Launch the process and wait for ``GET /api/health`` to answer 200; returns the seconds it took.

        Raises RuntimeError (with the log's tail) when the process exits or never becomes ready.
        """
        self.starts += 1
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it; closed on exit below
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "librefang", "start", "--foreground", "--home", str(self.home),
             "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )
        log.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def kill(self) -> None:
        """SIGKILL the daemon (a crash: no shutdown hook runs) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Graceful stop (SIGTERM); SIGKILL if it does not exit within ``timeout``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: Any) -> httpx.Client:
        """A synchronous client with the API key."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An async client with the API key."""
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 30),
                                 **kwargs)

    def rss_bytes(self) -> int:
        """Resident memory of the daemon process, read from /proc (no request, so no disturbance)."""
        with open(f"/proc/{self.pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def open_fds(self) -> int:
        """Open file descriptors of the daemon process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_kinds(self) -> dict[str, int]:
        """Open descriptors by kind: socket, pipe, anon_inode, or the file's name (db, wal, log...)."""
        kinds: dict[str, int] = {}
        folder = f"/proc/{self.pid}/fd"
        for fd in os.listdir(folder):
            try:
                target = os.readlink(f"{folder}/{fd}")
            except OSError:
                continue
            kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else Path(target).name
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0


AGENT_TOML = """name = "{name}"
description = "{description}"
[model]
provider = "openai"
model = "fake-model"
system_prompt = "You are a reliability test agent."
"""


def agent_manifest(name: str, description: str = "reliability harness agent") -> str:
    """A minimal manifest of an agent that talks to the fake provider."""
    return AGENT_TOML.format(name=name, description=description)

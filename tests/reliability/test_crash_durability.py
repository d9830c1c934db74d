"""Crash durability: the real daemon process is SIGKILLed at random moments while concurrent
clients write (agent spawns with Idempotency-Key, config changes, messages against the fake
provider, memory KV puts and memories when the memory plugin is installed). After every restart,
which needs no manual step: every acknowledged (2xx) write is present and intact, nothing
half-written or unknown is visible, a retried unacknowledged spawn with its Idempotency-Key yields
exactly one agent, the audit chain verifies, sessions load, and the restart log holds no traceback.

A round kills the daemon only once every writer kind has had at least one acknowledged write in
that round (so a slow, loaded machine cannot turn the test into one that checks nothing), and no
sooner than a random moment of the write window; a daemon that cannot acknowledge every kind
within ``ACK_TIMEOUT`` fails the test with the kinds missing and the daemon's log. Writers keep
going after a transport error (one while the daemon is up is counted as unacknowledged and
retried with the next write; the ones at the kill end the round).

CI runs 3 rounds (20–50 s, depending on the load); ``LIBREFANG_RELIABILITY_LONG=1`` runs 12 rounds with longer write
windows. ``LIBREFANG_RELIABILITY_SEED`` replays a run (the seed is printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.reliability.daemon import Daemon, agent_manifest

LONG = os.environ.get("LIBREFANG_RELIABILITY_LONG") == "1"
ROUNDS = 12 if LONG else 3
WINDOW = (0.5, 5.0) if LONG else (1.0, 3.0)  # seconds of writes before the SIGKILL (at the earliest)
# After the last kind's first acknowledgement, the kill waits a random extra moment up to this long,
# so it does not always land right behind one particular write.
EXTRA_AFTER_ACKS = 0.5
# A daemon that cannot acknowledge one write of every kind in this long (a turn took ~1.2 s on a
# loaded machine) is broken, not slow.
ACK_TIMEOUT = 60.0
KINDS = ("agents", "config", "messages", "kv", "memories")
# Each config writer owns one key, so "last acknowledged value" is well defined.
CONFIG_KEYS = {"rate_limit.retry_after_secs": (1, 3600), "audit.retention_days": (1, 36500)}
TRANSPORT_ERRORS = (httpx.TransportError,)


@dataclass
class Ledger:
    """What the clients sent and what the daemon acknowledged."""

    agents: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (name, description)
    pending_spawns: dict[str, tuple[str, str]] = field(default_factory=dict)  # idempotency key -> (name, toml)
    config_acked: dict[str, int] = field(default_factory=dict)
    # Values sent since the key's last acknowledgement whose answer never came: any may have committed.
    config_pending: dict[str, list[int]] = field(default_factory=dict)
    messages: list[tuple[str, str, str, str]] = field(default_factory=list)  # agent, session, text, reply
    kv_acked: dict[tuple[str, str], Any] = field(default_factory=dict)
    kv_pending: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # as config_pending
    kv_supported: bool | None = None
    memories: dict[str, tuple[str, str]] = field(default_factory=dict)  # memory id -> (agent id, content)
    memory_supported: bool | None = None
    server_errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"sent": 0, "acknowledged": 0, "unacknowledged": 0})
    acked_by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def ack(self, kind: str) -> None:
        self.counts["acknowledged"] += 1
        self.acked_by_kind[kind] += 1

    def note_status(self, what: str, response: httpx.Response) -> None:
        if response.status_code >= 500:
            self.server_errors.append(f"{what}: {response.status_code} {response.text[:300]}")


class Writers:
    """Concurrent write loops against one daemon until it is killed (``stop`` is set right after)."""

    def __init__(self, daemon: Daemon, ledger: Ledger, rng: random.Random, round_no: int) -> None:
        self.daemon, self.ledger, self.rng, self.round = daemon, ledger, rng, round_no
        self.stop = asyncio.Event()
        self.acked: set[str] = set()  # the kinds acknowledged at least once in this round
        self.progress = asyncio.Event()  # set on every new kind acknowledged in this round
        self.refusals: list[str] = []  # 4xx answers to memory writes (for the failure message)

    def ack(self, kind: str) -> None:
        self.ledger.ack(kind)
        if kind not in self.acked:
            self.acked.add(kind)
            self.progress.set()

    def required(self) -> set[str]:
        """The kinds this round must acknowledge before the kill (the memory ones only when installed)."""
        kinds = set(KINDS)
        if self.ledger.kv_supported is False:
            kinds.discard("kv")
        if self.ledger.memory_supported is False:
            kinds.discard("memories")
        return kinds

    async def transport_error(self) -> None:
        """An unanswered write: expected at the kill; while the daemon is up, retried with the next one."""
        self.ledger.counts["unacknowledged"] += 1
        if not self.stop.is_set():
            await asyncio.sleep(0.05)  # the kill is under way or the daemon is busy: do not spin

    async def agent_for_write(self) -> str | None:
        """An acknowledged agent to write to (None, after a short wait, while there is none yet)."""
        if not self.ledger.agents:
            await asyncio.sleep(0.05)
            return None
        return self.rng.choice(sorted(self.ledger.agents))

    async def spawner(self, client: httpx.AsyncClient, worker: int) -> None:
        for i in range(10_000):
            if self.stop.is_set():
                return
            name = f"crash-r{self.round}-w{worker}-{i}"
            description = f"round {self.round} worker {worker} item {i} " + "x" * self.rng.randint(0, 400)
            toml = agent_manifest(name, description)
            key = str(uuid.uuid4())
            self.ledger.counts["sent"] += 1
            self.ledger.pending_spawns[key] = (name, toml)  # retried with its key by verify()
            try:
                response = await client.post("/api/agents", json={"manifest_toml": toml},
                                              headers={"Idempotency-Key": key})
            except TRANSPORT_ERRORS:
                await self.transport_error()
                continue
            self.ledger.note_status("spawn", response)
            del self.ledger.pending_spawns[key]
            if response.status_code == 201:
                self.ledger.agents[response.json()["agent_id"]] = (name, description)
                self.ack("agents")

    async def config_writer(self, client: httpx.AsyncClient, key: str) -> None:
        low, high = CONFIG_KEYS[key]
        while not self.stop.is_set():
            value = self.rng.randint(low, high)
            self.ledger.counts["sent"] += 1
            self.ledger.config_pending.setdefault(key, []).append(value)
            try:
                response = await client.post("/api/config/set", json={"path": key, "value": value})
            except TRANSPORT_ERRORS:
                await self.transport_error()
                continue
            self.ledger.note_status("config", response)
            if response.status_code == 200:
                # Sequential writes of one key: this value supersedes every one sent before it.
                self.ledger.config_pending.pop(key, None)
                self.ledger.config_acked[key] = value
                self.ack("config")
            else:
                self.ledger.config_pending[key].remove(value)  # refused: never applied

    async def messenger(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            agent_id = await self.agent_for_write()
            if agent_id is None:
                continue
            text = f"durable message {uuid.uuid4().hex}"
            self.ledger.counts["sent"] += 1
            try:
                response = await client.post(f"/api/agents/{agent_id}/message", json={"message": text})
            except TRANSPORT_ERRORS:
                await self.transport_error()
                continue
            self.ledger.note_status("message", response)
            if response.status_code == 200:
                body = response.json()
                self.ledger.messages.append((agent_id, body["session_id"], text, body["response"]))
                self.ack("messages")

    async def kv_writer(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set() and self.ledger.kv_supported is not False:
            agent_id = await self.agent_for_write()
            if agent_id is None:
                continue
            slot = (agent_id, f"k{self.rng.randint(0, 4)}")
            value = {"round": self.round, "token": uuid.uuid4().hex, "n": self.rng.randint(0, 10**9)}
            self.ledger.counts["sent"] += 1
            self.ledger.kv_pending.setdefault(slot, []).append(value)
            try:
                response = await client.put(f"/api/memory/agents/{slot[0]}/kv/{slot[1]}", json={"value": value})
            except TRANSPORT_ERRORS:
                await self.transport_error()
                continue
            self.ledger.note_status("kv", response)
            if 200 <= response.status_code < 300:
                self.ledger.kv_pending.pop(slot, None)  # supersedes the unanswered puts before it
                self.ledger.kv_supported = True
                self.ledger.kv_acked[slot] = value
                self.ack("kv")
                continue
            self.ledger.kv_pending[slot].remove(value)
            self.ledger.counts["sent"] -= 1
            if self.unsupported(response):
                self.ledger.kv_supported = False
                self.progress.set()  # the kind is no longer required this round
                return
            await asyncio.sleep(0.05)  # a refusal: do not hammer

    async def memory_writer(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set() and self.ledger.memory_supported is not False:
            agent_id = await self.agent_for_write()
            if agent_id is None:
                continue
            content = f"durable memory r{self.round} {uuid.uuid4().hex}"
            self.ledger.counts["sent"] += 1
            try:
                response = await client.post("/api/memory", json={"agent_id": agent_id, "content": content,
                                                                  "level": "agent"})
            except TRANSPORT_ERRORS:
                await self.transport_error()
                continue
            self.ledger.note_status("memory", response)
            if response.status_code == 201:
                self.ledger.memory_supported = True
                for item in response.json()["memories"]:
                    assert item["content"] == content and item["agent_id"] == agent_id, item
                    self.ledger.memories[item["id"]] = (agent_id, content)
                self.ack("memories")
                continue
            self.ledger.counts["sent"] -= 1
            if self.unsupported(response):
                self.ledger.memory_supported = False
                self.progress.set()
                return
            await asyncio.sleep(0.05)

    def unsupported(self, response: httpx.Response) -> bool:
        """Whether a refused write means the memory plugin is not installed (404 "no route"). Any
        other refusal is kept (the round fails with it if the kind never gets acknowledged) and the
        writer goes on; a 5xx is also recorded as a server error by ``note_status``."""
        if response.status_code < 500:
            self.refusals.append(f"{response.request.method} {response.request.url.path}: "
                                 f"{response.status_code} {response.text[:200]}")
        return response.status_code == 404 and response.json().get("error", "").startswith("no route")

    async def wait_for_every_kind(self, limit: float) -> None:
        """Until every required kind has been acknowledged in this round; fails the test after ``limit`` s."""
        deadline = time.monotonic() + limit
        while not self.required() <= self.acked:
            left = deadline - time.monotonic()
            if left <= 0 or not self.daemon.alive():
                state = "exited" if not self.daemon.alive() else f"served {limit:.0f} s"
                pytest.fail(f"round {self.round}: the daemon {state} without acknowledging one write of "
                            f"{sorted(self.required() - self.acked)} (acknowledged: {sorted(self.acked)}; "
                            f"server errors: {self.ledger.server_errors[-5:]}; refusals: {self.refusals[-5:]}); log:\n{self.daemon.log_tail()}")
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    async def run(self, window: float) -> None:
        limits = httpx.Limits(max_connections=16)
        async with self.daemon.async_client(timeout=30, limits=limits) as client:
            loops = [self.spawner(client, w) for w in range(3)]
            loops += [self.config_writer(client, key) for key in CONFIG_KEYS]
            loops += [self.messenger(client) for _ in range(2)]
            loops += [self.kv_writer(client), self.memory_writer(client)]
            tasks = [asyncio.create_task(loop) for loop in loops]
            try:
                started = time.monotonic()
                await self.wait_for_every_kind(ACK_TIMEOUT)
                extra = self.rng.uniform(0, EXTRA_AFTER_ACKS)
                await asyncio.sleep(max(started + window - time.monotonic(), extra))
                # The crash: SIGKILL while requests are in flight (no shutdown hook, no flush).
                await asyncio.to_thread(self.daemon.kill)
            finally:
                self.stop.set()
                done, pending = await asyncio.wait(tasks, timeout=30)
                for task in pending:
                    task.cancel()
            assert not pending, "a writer did not notice the crash"
            for task in done:
                task.result()


def verify(daemon: Daemon, ledger: Ledger) -> dict[str, int]:
    """Check the restarted daemon against the ledger; returns the counts found."""
    found = dict.fromkeys(KINDS, 0)
    with daemon.client() as client:
        audit = client.get("/api/audit/verify").json()
        assert audit["valid"] is True and audit.get("first_broken_seq") is None, audit

        # Acknowledged agents: present and intact.
        for agent_id, (name, description) in ledger.agents.items():
            detail = client.get(f"/api/agents/{agent_id}")
            assert detail.status_code == 200, f"acknowledged agent {name} lost: {detail.text}"
            body = detail.json()
            assert body["name"] == name and body["manifest"].get("description") == description
            found["agents"] += 1

        # Nothing half-written or unknown: every listed agent loads and was sent by a client.
        sent_names = {name for name, _ in ledger.agents.values()} | {n for n, _ in ledger.pending_spawns.values()}
        listed: list[dict[str, Any]] = []
        while True:
            page = client.get("/api/agents", params={"limit": 500, "offset": len(listed)}).json()
            listed += page["items"]
            if len(listed) >= page["total"] or not page["items"]:
                break
        names = [item["name"] for item in listed]
        assert len(names) == len(set(names)), "duplicate agents after a crash"
        for item in listed:
            assert item["name"] in sent_names, f"unknown agent {item['name']}"
            assert client.get(f"/api/agents/{item['id']}").status_code == 200

        # Retrying an unacknowledged spawn with its Idempotency-Key converges on exactly one agent.
        for key, (name, toml) in list(ledger.pending_spawns.items()):
            retry = client.post("/api/agents", json={"manifest_toml": toml}, headers={"Idempotency-Key": key})
            ledger.note_status("spawn retry", retry)
            if retry.status_code == 201:
                agent_id = retry.json()["agent_id"]
                assert retry.json()["name"] == name
                ledger.agents[agent_id] = (name, tomllib.loads(toml)["description"])
            else:
                assert retry.status_code == 409, f"retry of {name}: {retry.status_code} {retry.text}"
                # 409 = the name exists: the original spawn committed before the kill
                existing = [i for i in client.get("/api/agents", params={"q": name, "limit": 500}).json()["items"]
                            if i["name"] == name]
                assert len(existing) == 1, retry.text
                ledger.agents[existing[0]["id"]] = (name, tomllib.loads(toml)["description"])
            del ledger.pending_spawns[key]
            found["agents"] += 1  # acknowledged now, by the retry

        # Config: the last acknowledged value, or one sent after it whose answer never came.
        live = client.get("/api/config").json()
        on_disk = tomllib.loads((daemon.home / "config.toml").read_text())
        for key, value in list(ledger.config_acked.items()):
            section, leaf = key.split(".")
            allowed = {value, *ledger.config_pending.get(key, [])}
            assert live[section][leaf] in allowed and on_disk[section][leaf] in allowed, (key, value, allowed)
            assert live[section][leaf] == on_disk[section][leaf], (key, live[section][leaf], on_disk[section][leaf])
            ledger.config_acked[key] = live[section][leaf]  # what the next rounds must find
            found["config"] += 1
        ledger.config_pending.clear()

        # Messages: the acknowledged exchange is in its session, once, user text then reply.
        sessions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for agent_id, session_id, text, reply in ledger.messages:
            if (agent_id, session_id) not in sessions:
                view = client.get(f"/api/agents/{agent_id}/session", params={"session_id": session_id})
                assert view.status_code == 200, view.text
                sessions[(agent_id, session_id)] = view.json()["messages"]
            messages = sessions[(agent_id, session_id)]
            contents = [m["content"] for m in messages]
            assert contents.count(text) == 1, f"message lost or duplicated in {session_id}"
            at = contents.index(text)
            assert messages[at]["role"].lower() == "user"
            assert messages[at + 1]["role"].lower() == "assistant" and messages[at + 1]["content"] == reply
            found["messages"] += 1

        # KV: the last acknowledged value of the slot, or one put after it whose answer never came.
        for (agent_id, key), value in list(ledger.kv_acked.items()):
            got = client.get(f"/api/memory/agents/{agent_id}/kv/{key}")
            assert got.status_code == 200, got.text
            allowed = [value, *ledger.kv_pending.get((agent_id, key), [])]
            assert got.json().get("value") in allowed, (key, got.json(), value)
            ledger.kv_acked[(agent_id, key)] = got.json()["value"]
            found["kv"] += 1
        ledger.kv_pending.clear()

        # Memories: every acknowledged one is listed under its agent, not deleted, with its text.
        by_agent: dict[str, dict[str, str]] = {}
        for agent_id, _ in ledger.memories.values():
            by_agent.setdefault(agent_id, {})
        for agent_id, stored in by_agent.items():
            while True:
                page = client.get(f"/api/memory/agents/{agent_id}", params={"limit": 100, "offset": len(stored)})
                assert page.status_code == 200, page.text
                items = page.json()["memories"]
                stored.update((item["id"], item["content"]) for item in items)
                if not items or len(stored) >= page.json()["total"]:
                    break
        for memory_id, (agent_id, content) in ledger.memories.items():
            assert by_agent[agent_id].get(memory_id) == content, f"acknowledged memory {memory_id} lost or changed"
            found["memories"] += 1
    return found


@pytest.fixture
def fake_llm_thread():
    server = FakeLLMServer().start_in_thread()
    yield server
    server.stop_thread()


@pytest.mark.timeout(900 if LONG else 300)
async def test_acknowledged_writes_survive_sigkill(tmp_path: Path, fake_llm_thread: FakeLLMServer) -> None:
    seed = int(os.environ.get("LIBREFANG_RELIABILITY_SEED", time.time_ns() % 1_000_000))
    print(f"crash durability seed={seed} rounds={ROUNDS}")
    rng = random.Random(seed)
    daemon = Daemon(tmp_path / "home", fake_llm_url=fake_llm_thread.url)
    ledger = Ledger()
    restart_seconds = []
    began = time.monotonic()
    try:
        await asyncio.to_thread(daemon.start)
        for round_no in range(ROUNDS):
            window = rng.uniform(*WINDOW)
            await Writers(daemon, ledger, rng, round_no).run(window)
            assert not daemon.alive()
            # Restart with no manual step: no stale pid file, lock or journal stops it.
            restart_seconds.append(await asyncio.to_thread(daemon.start))
            found = await asyncio.to_thread(verify, daemon, ledger)
            assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_tail()
        assert not ledger.server_errors, ledger.server_errors
        # Every round acknowledged every kind before its kill (the memory kinds only when installed),
        # and the last verification found every acknowledged write of every round.
        required = [k for k in KINDS if (k != "kv" or ledger.kv_supported is not False)
                    and (k != "memories" or ledger.memory_supported is not False)]
        assert all(ledger.acked_by_kind[k] >= ROUNDS for k in required), ledger.acked_by_kind
        acknowledged = {"agents": len(ledger.agents), "config": len(ledger.config_acked),
                        "messages": len(ledger.messages), "kv": len(ledger.kv_acked), "memories": len(ledger.memories)}
        lost = sum(acknowledged[k] - found[k] for k in KINDS)
        assert lost == 0 and all(found[k] > 0 for k in required), (acknowledged, found)
        report = {"seed": seed, "rounds": ROUNDS, **ledger.counts, "acknowledged_by_kind": ledger.acked_by_kind,
                  "verified_after_last_restart": found, "lost": lost, "kv_supported": bool(ledger.kv_supported),
                  "memory_supported": bool(ledger.memory_supported),
                  "restart_seconds_max": round(max(restart_seconds), 2), "seconds": round(time.monotonic() - began, 1)}
        print("crash durability report " + json.dumps(report))
    finally:
        await asyncio.to_thread(daemon.stop)

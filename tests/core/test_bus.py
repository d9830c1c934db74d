"""Event bus (bounded queues, drops counted, publisher never blocks) and owned background tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import librefang
import pytest
from librefang.app import build_app
from librefang.bus import EventBus
from librefang.errors import ServiceUnavailable
from librefang.tasks import TaskRegistry
from librefang.testing import make_client


async def test_fan_out_by_pattern():
    bus = EventBus()
    every = bus.subscribe("*")
    agents = bus.subscribe("agent.*")
    exact = bus.subscribe("agent.spawned")
    bus.publish("agent.spawned", {"id": 1}, source="agents")
    bus.publish("agent.killed", {"id": 1})
    bus.publish("memory.stored", {})
    assert [e.topic for e in _drain(every)] == ["agent.spawned", "agent.killed", "memory.stored"]
    assert [e.topic for e in _drain(agents)] == ["agent.spawned", "agent.killed"]
    got = _drain(exact)
    assert [e.topic for e in got] == ["agent.spawned"] and got[0].source == "agents"
    assert got[0].to_dict()["data"] == {"id": 1}


def _drain(sub):
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


async def test_slow_subscriber_loses_events_and_is_counted_publisher_never_blocks():
    bus = EventBus()
    slow = bus.subscribe("tick", maxsize=5, name="slow-dashboard")
    fast = bus.subscribe("tick", maxsize=20_000)
    received = []

    async def consume():
        async for event in fast:
            received.append(event.data["n"])
            if len(received) == 10_000:
                return

    consumer = asyncio.create_task(consume())
    started = time.perf_counter()
    for n in range(10_000):
        bus.publish("tick", {"n": n})  # synchronous: returns without awaiting anyone
    elapsed = time.perf_counter() - started
    await asyncio.wait_for(consumer, 5)
    assert elapsed < 2.0
    assert received == list(range(10_000))  # the fast subscriber lost nothing, in order
    assert slow.queue.qsize() == 5 and slow.dropped == 9_995
    assert [slow.queue.get_nowait().data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    stats = bus.stats()
    assert stats["published"] == 10_000 and stats["dropped_events"] == 9_995
    assert stats["lagging"] == [{"name": "slow-dashboard", "pattern": "tick", "dropped": 9_995, "queued": 0}]


async def test_history_is_bounded_and_unsubscribe_stops_delivery():
    bus = EventBus(history_size=3)
    with bus.subscribe("x") as sub:
        bus.publish("x", {"n": 1})
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    for n in range(10):
        bus.publish("x", {"n": n})
    assert sub.queue.qsize() == 1
    assert [e.data["n"] for e in bus.history] == [7, 8, 9]


async def test_a_subscriber_added_or_removed_after_publishing_gets_exactly_its_topics():
    """Publishing keeps which subscribers match each topic; every subscribe/unsubscribe changes that."""
    bus = EventBus()
    first = bus.subscribe("agent.*")
    bus.publish("agent.spawned", {"n": 1})
    bus.publish("memory.stored", {"n": 1})
    late_exact = bus.subscribe("agent.spawned")
    late_all = bus.subscribe("*")
    bus.publish("agent.spawned", {"n": 2})
    bus.publish("memory.stored", {"n": 2})
    first.close()
    bus.publish("agent.spawned", {"n": 3})
    assert [(e.topic, e.data["n"]) for e in _drain(first)] == [("agent.spawned", 1), ("agent.spawned", 2)]
    assert [e.data["n"] for e in _drain(late_exact)] == [2, 3]
    assert [(e.topic, e.data["n"]) for e in _drain(late_all)] == [
        ("agent.spawned", 2), ("memory.stored", 2), ("agent.spawned", 3)]


def test_event_ids_are_unique_strings_also_in_a_forked_child():
    bus = EventBus(history_size=10_000)
    ids = [bus.publish("x").id for _ in range(5_000)]
    assert len(set(ids)) == 5_000 and all(isinstance(i, str) and i for i in ids)
    assert bus.history[-1].to_dict()["id"] == ids[-1]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child continues the parent's counter only if the random part is drawn again
        try:
            os.write(write, "\n".join(EventBus().publish("x").id for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_ids = pipe.read().split("\n")
    os.waitpid(pid, 0)
    assert len(child_ids) == 3 and not set(child_ids) & {*ids, bus.publish("x").id, bus.publish("x").id}
    assert child_ids[0].split("-")[0] != ids[0].split("-")[0]


async def test_subscription_limits():
    bus = EventBus(max_subscribers=2)
    for bad in (0, -1, 2_000_000):
        with pytest.raises(ValueError):
            bus.subscribe("x", maxsize=bad)
    bus.subscribe("a")
    bus.subscribe("b")
    with pytest.raises(ServiceUnavailable):
        bus.subscribe("c")


async def test_health_detail_reports_dropped_events(make_kernel):
    kernel = await make_kernel(load_entry_points=False)
    kernel.bus.subscribe("noise", maxsize=1, name="stuck")
    for _ in range(3):
        kernel.bus.publish("noise", {})
    client = make_client(build_app(kernel))
    body = await (await client.get("/api/health/detail")).get_json()
    assert body["event_bus"]["dropped_events"] == 2
    assert {"name": "event_bus", "status": "warn"} in body["checks"]


# -- owned tasks ------------------------------------------------------------------------------------


class Worker:
    """A test plugin that starts a background loop in ``startup`` and records its fate."""

    def __init__(self) -> None:
        self.ticks = 0
        self.cleaned_up = False
        self.task = None

    async def _loop(self):
        try:
            while True:
                self.ticks += 1
                await asyncio.sleep(0.01)
        finally:
            self.cleaned_up = True

    @librefang.hookimpl
    def startup(self, kernel):
        self.task = kernel.tasks.spawn("worker", self._loop(), name="worker:loop")


async def test_owned_tasks_cancelled_on_owner_shutdown(make_kernel):
    worker = Worker()
    other = Worker()

    class Other:
        @librefang.hookimpl
        def startup(self, kernel):
            other.task = kernel.tasks.spawn("other", other._loop())

    kernel = await make_kernel(plugins={"worker": worker, "other": Other()}, load_entry_points=False)
    await asyncio.sleep(0.05)
    assert worker.ticks > 0 and kernel.tasks.count("worker") == 1
    await kernel.stop_plugin("worker")
    assert worker.task.cancelled() and worker.cleaned_up
    assert kernel.tasks.count("worker") == 0
    assert not other.task.done()  # another plugin's work goes on
    await kernel.stop()
    assert other.task.cancelled() and other.cleaned_up and kernel.tasks.count() == 0


async def test_cancel_owner_waits_bounded_for_stubborn_tasks(caplog):
    registry = TaskRegistry()
    release = asyncio.Event()

    async def stubborn():
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # ignores cancellation

    async def failing():
        raise RuntimeError("boom in background")

    task = registry.spawn("p", stubborn())
    registry.spawn("p", failing())
    await asyncio.sleep(0)
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR, logger="librefang.tasks"):
        await registry.cancel_owner("p", grace=0.2)
    assert time.perf_counter() - started < 1.0  # shutdown is not held hostage
    assert any("boom in background" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)

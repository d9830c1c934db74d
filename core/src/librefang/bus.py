"""In-process event bus: async publish/subscribe with bounded per-subscriber queues.

A publisher never blocks: when a subscriber's queue is full the event is dropped for that
subscriber and counted (per subscriber and in total, shown in ``/api/health/detail``). A short
ring buffer keeps recent events for late readers. Publish from the event loop's thread; code in a
worker thread uses ``loop.call_soon_threadsafe(bus.publish, ...)``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

# Event ids only need to be unique (nothing parses them): a random part drawn once per process
# (again in a forked child) and a counter, instead of a uuid4 per event (an os.urandom call and a
# UUID object on every publish, which the agent turn pays for its turn_completed event).
_id_prefix = ""
_id_counter = itertools.count(1)


def _new_id_space() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex() + "-"
    _id_counter = itertools.count(1)


_new_id_space()
os.register_at_fork(after_in_child=_new_id_space)


def new_event_id() -> str:
    """A process-unique event id: ``<16 random hex>-<counter in hex>``."""
    return f"{_id_prefix}{next(_id_counter):x}"


@dataclass(frozen=True, slots=True)
class Event:
    """One published event."""

    topic: str
    data: dict[str, Any]
    source: str = ""
    id: str = field(default_factory=new_event_id)
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "topic": self.topic, "source": self.source, "timestamp": self.timestamp, "data": self.data}


class Subscription:
    """A subscriber's bounded queue; iterate it with ``async for``."""

    def __init__(self, bus: EventBus, pattern: str, maxsize: int, name: str = "") -> None:
        self.bus = bus
        self.pattern = pattern
        self.name = name
        self.delivered = 0
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._exact = not any(ch in pattern for ch in "*?[")

    def matches(self, topic: str) -> bool:
        return topic == self.pattern if self._exact else fnmatch.fnmatchcase(topic, self.pattern)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self.bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EventBus:
    """Publish/subscribe by topic pattern (``agent.*``, ``*``)."""

    def __init__(self, default_queue_size: int = 1000, history_size: int = 500, max_subscribers: int = 10_000) -> None:
        self.default_queue_size = default_queue_size
        self.max_subscribers = max_subscribers
        self._subscribers: list[Subscription] = []
        # topic -> the subscribers whose pattern matches it, kept until the subscribers change
        # (publishing then skips matching every pattern). Bounded: cleared when full.
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self.history: deque[Event] = deque(maxlen=history_size)
        self.published = 0
        self.dropped_total = 0

    def subscribe(self, pattern: str = "*", maxsize: int | None = None, name: str = "") -> Subscription:
        """A new subscription receiving events whose topic matches ``pattern`` (``fnmatch`` style).

        ``maxsize`` bounds its queue (default 1000); events beyond it are dropped for this
        subscriber only. Close it (``with bus.subscribe(...) as sub`` or ``sub.close()``) when done.
        """
        size = self.default_queue_size if maxsize is None else maxsize
        if not 1 <= size <= 1_000_000:
            raise ValueError("maxsize must be between 1 and 1,000,000")
        if len(self._subscribers) >= self.max_subscribers:
            from librefang.errors import ServiceUnavailable

            raise ServiceUnavailable(f"event bus has {self.max_subscribers} subscribers already", code="bus_full")
        sub = Subscription(self, pattern, size, name)
        self._subscribers.append(sub)
        self._routes.clear()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
            self._routes.clear()

    def publish(self, topic: str, data: dict[str, Any] | None = None, source: str = "") -> Event:
        """Deliver an event to every matching subscriber without waiting."""
        event = Event(topic=topic, data=data or {}, source=source)
        self.published += 1
        self.history.append(event)
        subs = self._routes.get(topic)
        if subs is None:
            if len(self._routes) >= 1024:
                self._routes.clear()
            subs = self._routes[topic] = tuple(sub for sub in self._subscribers if sub.matches(topic))
        for sub in subs:
            try:
                sub.queue.put_nowait(event)
                sub.delivered += 1
            except asyncio.QueueFull:
                sub.dropped += 1
                self.dropped_total += 1
        return event

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def stats(self) -> dict[str, Any]:
        """Counters for health and metrics; ``lagging`` lists subscribers that lost events."""
        lagging = [
            {"name": s.name, "pattern": s.pattern, "dropped": s.dropped, "queued": s.queue.qsize()}
            for s in self._subscribers if s.dropped
        ]
        return {
            "published": self.published,
            "dropped_events": self.dropped_total,
            "subscribers": len(self._subscribers),
            "lagging": lagging[:20],
        }

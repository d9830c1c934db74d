"""What :meth:`LLMRegistry.stream <librefang_providers.registry.LLMRegistry.stream>` returns: the
events of one call, carried one list per network read (see :class:`EventStream`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

from librefang_providers.types import StreamEvent


class EventStream:
    """What :meth:`LLMRegistry.stream` returns: the call's events in order, as an async iterator
    (``async for``, ``__anext__``, ``aclose``). Underneath, the events travel in lists (one per network
    read): ``api.collect`` folds those lists directly, so an answer nobody streams passes no generator
    per event; ``async for`` gets the events one by one, each as soon as its read arrived."""

    __slots__ = ("_batches", "_events")

    def __init__(self, batches: AsyncIterator[list[StreamEvent]]) -> None:
        self._batches: Any = batches
        self._events: Any = None

    def _iterator(self) -> Any:
        events = self._events
        if events is None:
            events = self._events = _flatten(self._batches)
        return events

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterator()

    def __anext__(self) -> Awaitable[StreamEvent]:
        return self._iterator().__anext__()

    def batches(self) -> AsyncIterator[list[StreamEvent]] | None:
        """The lists of events, or ``None`` once the events were asked for one by one."""
        return self._batches if self._events is None else None

    async def aclose(self) -> None:
        """Stop the call (the connection is released or closed); harmless once it ended."""
        if self._events is not None:
            await self._events.aclose()
        await self._batches.aclose()


async def _flatten(batches: AsyncIterator[list[StreamEvent]]) -> AsyncIterator[StreamEvent]:
    try:
        async for batch in batches:
            for event in batch:
                yield event
    finally:
        await batches.aclose()  # type: ignore[attr-defined]

"""``GET /api/logs/stream``: the daemon's log records as Server-Sent Events.

Each kernel owns one :class:`LogStream`: a ``logging.Handler`` attached to the root logger while the
kernel runs (``attach`` at start, ``detach`` at stop; no module state). It keeps the newest records
in a bounded ring buffer and fans each record out to bounded per-subscriber queues; a subscriber
that falls behind loses its oldest records (counted and reported), never the daemon's memory.
Records are redacted before they are buffered: credential shapes, the API key, config secrets and
loaded vault secrets never reach a client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from quart import Response, request

from librefang import current_kernel
from librefang.errors import BadRequest, ServiceUnavailable
from librefang.logs import redact_record, redacting_filters, scrub, scrub_values
from librefang.routing import Router

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

RING_CAPACITY = 1000
QUEUE_SIZE = 500
MAX_SUBSCRIBERS = 16
KEEPALIVE_SECONDS = 15.0
MAX_MESSAGE_CHARS = 8000
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}


class Subscriber:
    """One client's bounded queue; fed from any thread, read on the kernel's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, item: dict[str, Any] | None) -> None:
        """Queue ``item`` (``None`` ends the stream), from the loop's thread or any other."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._put(item)
            return
        try:
            self.loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            pass

    def _put(self, item: dict[str, Any] | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest record goes; the client is told how many
            self.dropped += 1
        self.queue.put_nowait(item)


class LogStream(logging.Handler):
    """Ring buffer of redacted log records plus live fan-out to SSE subscribers."""

    def __init__(
        self,
        secret_values: Callable[[], Iterable[str]],
        *,
        capacity: int = RING_CAPACITY,
        queue_size: int = QUEUE_SIZE,
        max_subscribers: int = MAX_SUBSCRIBERS,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        super().__init__(level=logging.NOTSET)
        self.secret_values = secret_values
        self.ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.keepalive_seconds = keepalive_seconds
        self.subscribers: set[Subscriber] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.attached = False
        self._seq = 0
        self._state_lock = threading.Lock()  # emit runs on any thread that logs
        # Set while this thread holds _state_lock. A record logged by that same thread meanwhile (a
        # finalizer run by a garbage collection inside the critical section, e.g. "Unclosed
        # connection" from an HTTP client) must not wait for the lock it holds: it is parked in
        # _reentrant and added, in order, by the next emit instead.
        self._holding = threading.local()
        self._reentrant: collections.deque[dict[str, Any]] = collections.deque()

    # -- redaction -------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """Scrub credential shapes and every secret value the kernel knows."""
        try:
            values = list(self.secret_values())
        except Exception:  # noqa: BLE001 - redaction by shape still applies
            values = []
        return scrub_values(scrub(text), values)

    # -- logging.Handler -------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            redact_record(record, self.redact)
            message = record.getMessage()
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
            item: dict[str, Any] = {
                "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message[:MAX_MESSAGE_CHARS],
            }
            if getattr(self._holding, "active", False):
                self._reentrant.append(item)  # see __init__: never wait for our own lock
                return
            with self._locked():
                items = self._take_reentrant()
                items.append(item)
                for entry in items:
                    self._seq += 1
                    entry["seq"] = self._seq
                    self.ring.append(entry)
                subscribers = list(self.subscribers)
            for entry in items:
                for subscriber in subscribers:
                    subscriber.offer(entry)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the state lock, marking this thread as its holder (see ``__init__``)."""
        with self._state_lock:
            self._holding.active = True
            try:
                yield
            finally:
                self._holding.active = False

    def _take_reentrant(self) -> list[dict[str, Any]]:
        """The records parked while this thread held the lock (called with the lock held)."""
        items = []
        while self._reentrant:
            items.append(self._reentrant.popleft())
        return items

    # -- lifecycle -------------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start receiving the process's log records; also lend our secret values to the
        redacting filters of the daemon's own handlers (stderr, log file)."""
        if self.attached:
            return
        self.loop = loop
        root = logging.getLogger()
        root.addHandler(self)
        for log_filter in redacting_filters(root):
            add_source = getattr(log_filter.redactor, "add_source", None)
            if add_source is not None:
                add_source(self.secret_values)
        self.attached = True

    def detach(self) -> None:
        """Stop receiving records and end every open stream."""
        if not self.attached:
            return
        root = logging.getLogger()
        root.removeHandler(self)
        for log_filter in redacting_filters(root):
            remove_source = getattr(log_filter.redactor, "remove_source", None)
            if remove_source is not None:
                remove_source(self.secret_values)
        self.attached = False
        with self._locked():
            subscribers = list(self.subscribers)
            self.subscribers.clear()
        for subscriber in subscribers:
            subscriber.offer(None)

    # -- subscribers -----------------------------------------------------------------------------
    def check_capacity(self) -> None:
        """Raise 503 when the stream is not running or already serves its maximum of clients."""
        if self.loop is None or not self.attached:
            raise ServiceUnavailable("the log stream is not running", code="log_stream_unavailable")
        if len(self.subscribers) >= self.max_subscribers:
            raise ServiceUnavailable(
                f"too many log stream clients (at most {self.max_subscribers})", code="too_many_log_streams"
            )

    def subscribe(self, after_seq: int | None, backlog: int) -> tuple[Subscriber, list[dict[str, Any]]]:
        """A new subscriber plus the buffered records to send first (newest ``backlog``, or all
        after ``after_seq`` when the client resumes with ``Last-Event-ID``)."""
        with self._locked():
            self.check_capacity()
            assert self.loop is not None
            subscriber = Subscriber(self.loop, self.queue_size)
            buffered = list(self.ring)
            self.subscribers.add(subscriber)
        if after_seq is not None:
            buffered = [item for item in buffered if item["seq"] > after_seq]
        else:
            buffered = buffered[-backlog:] if backlog else []
        return subscriber, buffered

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._locked():
            self.subscribers.discard(subscriber)


def kernel_secret_values(kernel: Kernel) -> Callable[[], list[str]]:
    """A source of the secret values ``kernel`` holds right now: API key, config secrets, and
    vault secrets already loaded into this process (a secret never loaded cannot be logged)."""
    from librefang.config import SECRET_KEY_PATTERN

    cache: dict[str, Any] = {"raw": None, "values": []}

    def config_values() -> list[str]:
        raw = kernel.config.raw
        api_key = kernel.config.core.api_key
        token = (id(raw), api_key)
        if cache["raw"] == token:
            return cache["values"]
        values = [api_key]
        stack: list[tuple[str, Any]] = list(raw.items())
        while stack:
            key, value = stack.pop()
            if isinstance(value, dict):
                stack.extend(value.items())
            elif isinstance(value, str) and SECRET_KEY_PATTERN.search(str(key)):
                values.append(value)
        resolved = []
        for value in values:
            if not value or value.startswith("$sha256$"):
                continue
            resolved.append(value)
            if value.startswith(("env:", "vault:")):
                try:
                    resolved.append(kernel.secret(value))
                except Exception:  # noqa: BLE001 - an unreadable vault has nothing to leak
                    pass
        cache["raw"], cache["values"] = token, resolved
        return resolved

    def values() -> list[str]:
        found = list(config_values())
        vault = kernel.vault
        if getattr(vault, "_values", None) is not None:  # only what this process has decrypted
            found.extend(vault.known_values())
        return found

    return values


class StreamQuery(BaseModel):
    level: str = Field("debug", description="Minimum level: debug, info, warning, error, critical")
    filter: str = Field("", max_length=200, description="Only records whose logger or message contain this text")
    backlog: int = Field(100, ge=0, le=RING_CAPACITY, description="Buffered records to send first")


def _sse(item: dict[str, Any]) -> bytes:
    return f"id: {item['seq']}\nevent: log\ndata: {json.dumps(item)}\n\n".encode()


def add_routes(router: Router) -> None:
    @router.get("/api/logs/stream", cost=5, query=StreamQuery)
    async def logs_stream(query: StreamQuery) -> Response:
        """The daemon's log records as Server-Sent Events (redacted; keep-alive comments)."""
        kernel = current_kernel()
        minimum = LEVELS.get(query.level.lower())
        if minimum is None:
            raise BadRequest(f"level must be one of {', '.join(LEVELS)}", code="invalid_query")
        after_seq = None
        last_event = request.headers.get("Last-Event-ID")
        if last_event:
            if not last_event.isdigit() or len(last_event) > 19:
                raise BadRequest("Last-Event-ID must be a record sequence number", code="invalid_last_event_id")
            after_seq = int(last_event)
        stream: LogStream = kernel.logstream
        stream.check_capacity()
        needle = query.filter.lower()

        def wanted(item: dict[str, Any]) -> bool:
            if LEVELS.get(item["level"], logging.INFO) < minimum:
                return False
            return not needle or needle in item["message"].lower() or needle in item["logger"].lower()

        async def events() -> AsyncIterator[bytes]:
            # Subscribing here, not in the handler, ties the subscription to the generator's
            # ``finally``: a response that is never sent cannot leave a subscriber behind.
            try:
                subscriber, backlog = stream.subscribe(after_seq, query.backlog)
            except ServiceUnavailable as exc:
                yield f"event: error\ndata: {json.dumps({'error': exc.message, 'code': exc.code})}\n\n".encode()
                return
            shutdown = kernel.shutdown_requested
            stop_wait = asyncio.ensure_future(shutdown.wait()) if shutdown is not None else None
            try:
                yield b": connected\n\n"
                for item in backlog:
                    if wanted(item):
                        yield _sse(item)
                reported = 0
                while True:
                    getter = asyncio.ensure_future(subscriber.queue.get())
                    waiters = {getter} | ({stop_wait} if stop_wait is not None else set())
                    done, _ = await asyncio.wait(waiters, timeout=stream.keepalive_seconds,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        if stop_wait is not None and stop_wait in done:
                            return
                        yield b": keep-alive\n\n"
                        continue
                    item = getter.result()
                    if item is None:
                        return
                    if subscriber.dropped != reported:
                        yield f"event: dropped\ndata: {json.dumps({'dropped': subscriber.dropped})}\n\n".encode()
                        reported = subscriber.dropped
                    if wanted(item):
                        yield _sse(item)
            finally:
                if stop_wait is not None:
                    stop_wait.cancel()
                stream.unsubscribe(subscriber)

        response = Response(events(), mimetype="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

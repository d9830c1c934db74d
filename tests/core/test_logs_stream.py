"""``GET /api/logs/stream``: the daemon's log records as SSE, redacted, bounded, per kernel.

Most tests read the stream in-process through Quart's streaming test connection; one runs a real
server and reads it with httpx, including the end of the stream at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading

import httpx
import pytest
from librefang.app import build_app
from librefang.testing import LOOPBACK, make_client, start_live_server, write_config

KEY = "logstream-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
VAULT_SECRET = "vault-secret-value-9876543210"
CONFIG_SECRET = "config-plugin-token-abcdef"
log = logging.getLogger("librefang.test.logstream")


class Stream:
    """Reads SSE events from an open test connection."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.buffer = b""

    async def next(self, wait: float = 5.0) -> dict:
        """The next event; ``EOFError`` when the server ended the response."""
        while b"\n\n" not in self.buffer:
            chunk = await asyncio.wait_for(self.connection.receive(), wait)
            if not chunk:  # the final, empty body message
                raise EOFError("the stream ended")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n\n", 1)
        event: dict = {}
        for line in raw.decode().split("\n"):
            name, _, value = line.partition(":")
            event.setdefault(name or "comment", value.strip())
        if "data" in event:
            event["data"] = json.loads(event["data"])
        return event

    async def next_log(self, wait: float = 5.0) -> dict:
        while True:
            event = await self.next(wait)
            if event.get("event") == "log":
                return event["data"]

    async def logs_until(self, marker: str, wait: float = 5.0) -> list[dict]:
        found = []
        while True:
            item = await self.next_log(wait)
            found.append(item)
            if marker in item["message"]:
                return found


@contextlib.asynccontextmanager
async def open_stream(app, query: str = "", headers=None):
    connection = make_client(app).request(f"/api/logs/stream{query}", headers=headers, scope_base={"client": LOOPBACK})
    async with connection:
        await connection.send_complete()
        stream = Stream(connection)
        first = await stream.next()
        assert connection.status_code == 200, first
        assert first == {"comment": "connected"}
        try:
            yield stream
        finally:
            await connection.disconnect()


@pytest.fixture
async def kernel(make_kernel, librefang_home):
    from librefang.vault import Vault

    Vault(librefang_home).set("provider_token", VAULT_SECRET)
    config = f'api_key = "{KEY}"\n[someplugin]\ntoken = "{CONFIG_SECRET}"\n'
    return await make_kernel(config=config, plugins={}, load_entry_points=False)


async def test_stream_needs_auth(kernel):
    client = make_client(build_app(kernel))
    response = await client.get("/api/logs/stream")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.get_json())["code"] == "missing_credential"


async def test_stream_carries_log_records_with_headers(kernel):
    app = build_app(kernel)
    async with open_stream(app, headers=AUTH) as stream:
        assert stream.connection.headers["Content-Type"].startswith("text/event-stream")
        assert stream.connection.headers["X-Content-Type-Options"] == "nosniff"
        assert stream.connection.headers["x-request-id"]
        log.warning("hello %s", "stream")
        item = await stream.next_log()
        assert item["message"] == "hello stream"
        assert item["level"] == "warning" and item["logger"] == "librefang.test.logstream"
        assert item["seq"] >= 1 and item["timestamp"].endswith("+00:00")
        # The daemon's own records: a request that fails is in the access log.
        await make_client(app).get("/api/no/such/route", headers=AUTH)
        access = await stream.logs_until("/api/no/such/route")
        assert access[-1]["logger"] == "librefang.access" and "404" in access[-1]["message"]


async def test_secrets_are_redacted(kernel):
    assert kernel.secret("vault:provider_token") == VAULT_SECRET  # a plugin loaded it: now it is known
    async with open_stream(build_app(kernel), headers=AUTH) as stream:
        log.warning("calling upstream with Authorization: Bearer sk-live-abcdefghijklmnop")
        log.warning("the key is %s", KEY)
        log.warning("vault gave %s for the provider", VAULT_SECRET)
        log.warning("plugin token %s", CONFIG_SECRET)
        log.warning("x-api-key=%s; api_key: 'another-credential-42'", "abcdef123456")
        try:
            raise ValueError(f"upstream refused {VAULT_SECRET}")
        except ValueError:
            log.exception("request failed")
        log.warning("end-of-secrets")
        items = await stream.logs_until("end-of-secrets")
    text = json.dumps(items)
    for secret in ("sk-live-abcdefghijklmnop", KEY, VAULT_SECRET, CONFIG_SECRET, "abcdef123456",
                   "another-credential-42"):
        assert secret not in text, secret
    messages = [i["message"] for i in items]
    assert messages[0] == "calling upstream with Authorization: Bearer ***"
    assert messages[1] == "the key is ***"
    assert messages[2] == "vault gave *** for the provider"
    assert "Traceback" in messages[5] and "upstream refused ***" in messages[5]
    # The buffered copy is redacted too (a late subscriber reads it).
    assert VAULT_SECRET not in json.dumps(list(kernel.logstream.ring))


async def test_level_and_text_filters(kernel):
    async with open_stream(build_app(kernel), "?level=error&filter=needle", headers=AUTH) as stream:
        log.warning("needle but only a warning")
        log.error("an error without the word")
        log.error("the NEEDLE error")
        item = await stream.next_log()
    assert item["message"] == "the NEEDLE error"


@pytest.mark.parametrize("query", ["?level=verbose", "?backlog=5000", "?backlog=-1", "?filter=" + "x" * 201])
async def test_bad_queries_are_400(kernel, query):
    response = await make_client(build_app(kernel)).get(f"/api/logs/stream{query}", headers=AUTH)
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "invalid_query"


async def test_backlog_and_resume_with_last_event_id(kernel):
    for i in range(5):
        log.warning("before-connect %d", i)
    app = build_app(kernel)
    async with open_stream(app, "?backlog=3&filter=before-connect", headers=AUTH) as stream:
        items = [await stream.next_log() for _ in range(3)]
    assert [i["message"] for i in items] == ["before-connect 2", "before-connect 3", "before-connect 4"]
    resume = {**AUTH, "Last-Event-ID": str(items[0]["seq"])}
    async with open_stream(app, "?filter=before-connect", headers=resume) as stream:
        again = [await stream.next_log() for _ in range(2)]
    assert [i["seq"] for i in again] == [items[1]["seq"], items[2]["seq"]]
    bad = await make_client(app).get("/api/logs/stream", headers={**AUTH, "Last-Event-ID": "abc"})
    assert bad.status_code == 400


async def test_keep_alive_comments(kernel):
    kernel.logstream.keepalive_seconds = 0.05
    async with open_stream(build_app(kernel), headers=AUTH) as stream:
        assert await stream.next(wait=2) == {"comment": "keep-alive"}


async def test_buffers_are_bounded(kernel):
    stream_state = kernel.logstream
    stream_state.queue_size = 5
    async with open_stream(build_app(kernel), headers=AUTH) as stream:
        for i in range(50):  # no await in between: the client cannot keep up
            log.warning("burst %d", i)
        assert len(next(iter(stream_state.subscribers)).queue._queue) == 5
        dropped = await stream.next()
        assert dropped["event"] == "dropped" and dropped["data"] == {"dropped": 45}
        received = [(await stream.next_log())["message"] for _ in range(5)]
    assert received == [f"burst {i}" for i in range(45, 50)]
    for i in range(stream_state.ring.maxlen + 200):
        log.warning("ring %d", i)
    assert len(stream_state.ring) == stream_state.ring.maxlen


async def test_subscriber_count_is_bounded_and_released(kernel):
    kernel.logstream.max_subscribers = 1
    app = build_app(kernel)
    async with open_stream(app, headers=AUTH):
        response = await make_client(app).get("/api/logs/stream", headers=AUTH)
        assert response.status_code == 503
        assert (await response.get_json())["code"] == "too_many_log_streams"
    for _ in range(100):
        if not kernel.logstream.subscribers:
            break
        await asyncio.sleep(0.01)
    assert not kernel.logstream.subscribers
    async with open_stream(app, headers=AUTH):  # the slot was given back on disconnect
        pass


async def test_records_from_other_threads_arrive(kernel):
    async with open_stream(build_app(kernel), headers=AUTH) as stream:
        worker = threading.Thread(target=lambda: log.warning("from a worker thread"))
        worker.start()
        worker.join()
        item = await stream.next_log()
    assert item["message"] == "from a worker thread"


async def test_each_kernel_attaches_its_own_handler_and_detaches_on_stop(make_kernel, tmp_path):
    root = logging.getLogger()
    first = await make_kernel(plugins={}, load_entry_points=False)
    second = await make_kernel(plugins={}, load_entry_points=False, home=tmp_path / "other-home")
    assert first.logstream in root.handlers and second.logstream in root.handlers
    log.warning("seen by both")
    assert first.logstream.ring[-1]["message"] == second.logstream.ring[-1]["message"] == "seen by both"
    async with open_stream(build_app(first), "?backlog=0") as stream:
        await first.stop()
        with pytest.raises(EOFError):  # the stream ends: detach sent the end marker
            await stream.next(wait=2)
    assert first.logstream not in root.handlers and second.logstream in root.handlers
    assert not first.logstream.subscribers
    await second.stop()
    assert second.logstream not in root.handlers


async def test_live_server_stream_with_httpx(librefang_home):
    write_config(librefang_home, f'api_key = "{KEY}"\n')
    server = await asyncio.to_thread(start_live_server, librefang_home, plugins={}, load_entry_points=False)
    stopped = False
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/api/logs/stream")).status_code == 401
            async with client.stream("GET", "/api/logs/stream?level=warning", headers=AUTH) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"].startswith("no-store")
                lines = response.aiter_lines()
                assert await anext(lines) == ": connected"
                log.warning("live line with token=%s", KEY)
                data = None
                async for line in lines:
                    if line.startswith("data:") and "live line" in line:
                        data = json.loads(line[5:])
                        break
                assert data["message"] == "live line with token=***"
                # Shutting the server down ends the open stream instead of holding shutdown up.
                stopping = asyncio.ensure_future(asyncio.to_thread(server.stop))
                rest = [line async for line in lines]
                assert all("live line" not in line for line in rest)
                await stopping
                stopped = True
                assert not server.thread.is_alive()
    finally:
        if not stopped:
            await asyncio.to_thread(server.stop)


async def test_daemon_log_handlers_learn_the_kernels_secret_values(make_kernel, librefang_home):
    """The stderr / log-file handlers set up by ``setup_logging`` scrub the same values while a
    kernel runs (its secret source is added at start and removed at stop)."""
    import io

    from librefang.logs import RedactingFilter, Redactor

    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.addFilter(RedactingFilter(Redactor()))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        kernel = await make_kernel(config=f'api_key = "{KEY}"\n', plugins={}, load_entry_points=False)
        log.warning("daemon log with %s and Bearer abcdefghijklmnop", KEY)
        await kernel.stop()
        log.warning("after stop the value %s is only a string", KEY)
    finally:
        root.removeHandler(handler)
    lines = output.getvalue().splitlines()
    assert "daemon log with *** and Bearer ***" in lines
    assert f"after stop the value {KEY} is only a string" in lines  # no kernel, no known value


def test_a_record_logged_while_the_stream_holds_its_lock_is_kept_without_deadlock():
    """A garbage collection inside the stream's critical section may run a finalizer that logs
    (aiohttp's "Unclosed connection", asyncio's "Task was destroyed..."): that record comes back
    to the stream on the same thread, which holds the lock. It froze the whole daemon (seen in a
    soak); now the record is parked and added, in order, by the next emit."""
    import gc

    from librefang.logstream import LogStream

    stream = LogStream(lambda: [])
    loop = asyncio.new_event_loop()
    logger = logging.getLogger("librefang.test.gc")
    fired: list[str] = []
    worker_result: dict[str, object] = {}

    def log_during_collection(phase: str, _info: dict) -> None:
        if (phase == "start" and not fired and threading.current_thread() is worker
                and stream._state_lock.locked()):
            fired.append(phase)
            logger.error("logged by a collection inside the critical section")

    def subscribe() -> None:
        worker_result["subscribed"] = stream.subscribe(None, 10)

    worker = threading.Thread(target=subscribe, daemon=True)
    thresholds = gc.get_threshold()
    stream.attach(loop)
    gc.callbacks.append(log_during_collection)
    gc.set_threshold(1, 1, 1)  # every allocation in the critical section starts a collection
    try:
        worker.start()
        worker.join(10)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(log_during_collection)
    try:
        assert not worker.is_alive(), "the stream deadlocked on its own lock"
        assert fired, "no collection ran inside the critical section: the test proved nothing"
        assert "subscribed" in worker_result
        logger.error("the next record")
        messages = [item["message"] for item in stream.ring]
        assert messages[-2:] == ["logged by a collection inside the critical section", "the next record"]
        assert [item["seq"] for item in stream.ring][-2:] == [len(stream.ring) - 1, len(stream.ring)]
    finally:
        if worker.is_alive():  # deadlocked: its lock is held for good, detach() would wait on it too
            logging.getLogger().removeHandler(stream)
        else:
            stream.detach()
        loop.close()

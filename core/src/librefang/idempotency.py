"""``Idempotency-Key`` replay for creating POST routes declared with ``idempotent=True``.

A client that may retry a creating request (spawn, run, install) sends ``Idempotency-Key: <key>``.
The first request with a key claims it and runs; its 2xx response (status, body, content type) is
stored for 24 hours and replayed byte for byte to any later request with the same key and the same
body. The same key with a different body is a 409; so is a duplicate that arrives while the first
is still running. Failures (non-2xx, exceptions) release the key so the client can retry.

Keys are scoped to the principal, method and path, so two clients (or two routes) cannot collide or
read each other's responses. The claim is a single ``INSERT ... ON CONFLICT DO NOTHING`` in the
shared database, so it also holds across several daemon processes. While a claim is in progress
its ``headers`` column names the claiming process (host and pid): a claim left behind by a process
on this host that no longer runs (killed, crashed) is retaken at once instead of answering 409
until the lease expires (found by the crash-durability harness, tests/reliability).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from librefang.errors import BadRequest, Conflict
from librefang.storage import Database

log = logging.getLogger("librefang.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
TTL_SECONDS = 24 * 3600
# A claim still "in progress" after this long belongs to a process that died; it may be retaken.
IN_PROGRESS_LEASE_SECONDS = 3600
MAX_STORED_BODY_BYTES = 1024 * 1024
SWEEP_INTERVAL_SECONDS = 3600.0
REPLAYED_HEADERS = ("content-type", "location")
IN_PROGRESS = "in_progress"
DONE = "done"
HOST = socket.gethostname()


def _claimant() -> str:
    """Who holds an in-progress claim: this host and process."""
    return json.dumps({"claimed_by": {"host": HOST, "pid": os.getpid()}})


def _claimant_is_gone(headers: str | None) -> bool:
    """True when an in-progress claim belongs to a process on this host that is no longer running."""
    try:
        owner = json.loads(headers or "{}").get("claimed_by") or {}
        host, pid = owner.get("host"), int(owner.get("pid"))
    except (ValueError, TypeError, AttributeError):
        return False  # no owner recorded (older rows): only the lease frees it
    if host != HOST or pid == os.getpid():
        return False  # another machine's process, or our own request still running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def validate_key(key: str) -> str:
    """The key as sent, or :class:`BadRequest` when it is empty, too long or not printable ASCII."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters", code="invalid_idempotency_key"
        )
    if not all(33 <= ord(ch) <= 126 for ch in key):
        raise BadRequest(f"{HEADER} must be printable ASCII without spaces", code="invalid_idempotency_key")
    return key


def scope_key(principal: str, method: str, path: str, key: str) -> str:
    """The stored key: a digest of who asked, where, and the client's key."""
    return hashlib.sha256("\x1f".join((principal, method.upper(), path, key)).encode()).hexdigest()


def fingerprint(body: bytes, query: bytes, content_type: str) -> str:
    """What "the same request" means: the same raw body, query string and content type."""
    digest = hashlib.sha256()
    for part in (content_type.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


_CLAIM = text(
    "INSERT INTO core_idempotency (key, body_hash, state, status, headers, body, created_at)"
    " VALUES (:key, :hash, :state, NULL, :owner, NULL, :now) ON CONFLICT (key) DO NOTHING"
)
_READ = text("SELECT body_hash, state, status, headers, body, created_at FROM core_idempotency WHERE key = :key")
_DROP_STALE = text("DELETE FROM core_idempotency WHERE key = :key AND created_at = :created")
_COMPLETE = text(
    "UPDATE core_idempotency SET state = :state, status = :status, headers = :headers, body = :body WHERE key = :key"
)
_RELEASE = text("DELETE FROM core_idempotency WHERE key = :key AND state = :state")


def _try_claim(conn: Any, key: str, request_hash: str, now: float) -> tuple[bool, dict[str, Any] | None]:
    """One claim attempt in one transaction: (claimed, the existing row unless it was stale)."""
    inserted = conn.execute(
        _CLAIM, {"key": key, "hash": request_hash, "state": IN_PROGRESS, "now": now, "owner": _claimant()}
    )
    if inserted.rowcount == 1:
        return True, None
    row = conn.execute(_READ, {"key": key}).mappings().first()
    if row is None:
        return False, None
    age = now - float(row["created_at"])
    abandoned = row["state"] == IN_PROGRESS and (age > IN_PROGRESS_LEASE_SECONDS or _claimant_is_gone(row["headers"]))
    if age > TTL_SECONDS or abandoned:
        conn.execute(_DROP_STALE, {"key": key, "created": row["created_at"]})
        return False, None
    return False, dict(row)


def _execute(conn: Any, statement: Any, params: dict[str, Any]) -> None:
    conn.execute(statement, params)


@dataclass
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class IdempotencyStore:
    """Claims, completed responses and their expiry, in the ``core_idempotency`` table."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.replays = 0
        self.conflicts = 0

    async def claim(self, key: str, request_hash: str) -> StoredResponse | None:
        """Claim ``key`` for a new request (``None``), or return the stored response to replay.

        Raises :class:`Conflict` for a different body or a duplicate of a request still running.
        Each attempt is one transaction run by ``Database.run`` (one hop to the database thread
        with SQLite).
        """
        for _ in range(3):  # a stale row is removed and the claim retried
            now = self.clock()
            claimed, row = await self.db.run(_try_claim, key, request_hash, now)
            if claimed:
                return None
            if row is None:
                continue  # released between our insert and select, or stale and removed: try again
            self.conflicts += 1
            if row["body_hash"] != request_hash:
                raise Conflict(
                    f"this {HEADER} was already used with a different request body", code="idempotency_key_reused"
                )
            if row["state"] != DONE:
                raise Conflict(
                    f"a request with this {HEADER} is still in progress", code="idempotency_in_progress",
                    headers={"Retry-After": "1"},
                )
            self.conflicts -= 1
            self.replays += 1
            return StoredResponse(int(row["status"]), json.loads(row["headers"] or "{}"), bytes(row["body"] or b""))
        raise Conflict(f"this {HEADER} is contended; retry", code="idempotency_in_progress")

    async def complete(self, key: str, response: StoredResponse) -> None:
        """Store the response of the claimed request for replay."""
        await self.db.run(_execute, _COMPLETE, {
            "state": DONE, "status": response.status, "headers": json.dumps(response.headers),
            "body": response.body, "key": key,
        })

    async def release(self, key: str) -> None:
        """Forget a claim whose request failed, so the client can retry with the same key."""
        await self.db.run(_execute, _RELEASE, {"key": key, "state": IN_PROGRESS})

    async def sweep(self) -> int:
        """Delete expired responses and abandoned claims; returns how many."""
        now = self.clock()
        async with self.db.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM core_idempotency WHERE created_at < :expired"
                     " OR (state = :state AND created_at < :abandoned)"),
                {"expired": now - TTL_SECONDS, "state": IN_PROGRESS, "abandoned": now - IN_PROGRESS_LEASE_SECONDS},
            )
        return int(result.rowcount or 0)

    async def count(self) -> int:
        async with self.db.begin() as conn:
            return int((await conn.execute(text("SELECT COUNT(*) FROM core_idempotency"))).scalar_one())

    async def run_sweeper(self, interval: float = SWEEP_INTERVAL_SECONDS) -> None:
        """Sweep at once, then every ``interval`` seconds, for as long as the kernel runs."""
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    log.info("idempotency: swept %d expired keys", swept)
            except Exception:  # retried on the next round
                log.exception("idempotency sweep failed")
            await asyncio.sleep(interval)


async def run_idempotent(call: Callable[[], Awaitable[Any]]) -> Any:
    """Run a route handler under the request's ``Idempotency-Key`` (inside a request context).

    Without the header the handler simply runs. Used by :class:`librefang.Router` for routes
    declared ``idempotent=True``.
    """
    from quart import current_app, g, request

    from librefang import current_kernel

    raw_key = request.headers.get(HEADER)
    if raw_key is None:
        return await call()
    client_key = validate_key(raw_key)
    store: IdempotencyStore = current_kernel().idempotency
    body = await request.get_data(cache=True, as_text=False)
    request_hash = fingerprint(body, request.query_string, request.headers.get("content-type", ""))
    principal = str(getattr(g, "principal", None) or "anonymous")
    key = scope_key(principal, request.method, request.path, client_key)
    stored = await store.claim(key, request_hash)
    if stored is not None:
        replay = current_app.response_class(stored.body, status=stored.status)
        for name, value in stored.headers.items():
            replay.headers[name] = value
        replay.headers["Idempotent-Replayed"] = "true"
        return replay
    try:
        response = await current_app.make_response(await call())
        cached = await _storable(response)
    except BaseException:
        await asyncio.shield(store.release(key))
        raise
    if cached is None:
        await store.release(key)
    else:
        await store.complete(key, cached)
    return response


async def _storable(response: Any) -> StoredResponse | None:
    """The response to keep for replay: only a complete, bounded, 2xx body."""
    from quart.wrappers.response import DataBody

    if not 200 <= response.status_code < 300 or not isinstance(response.response, DataBody):
        return None  # failures are not kept; streams cannot be replayed
    length = response.content_length
    if length is not None and length > MAX_STORED_BODY_BYTES:
        return None
    body = await response.get_data(as_text=False)
    if len(body) > MAX_STORED_BODY_BYTES:
        return None
    headers = {name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers}
    return StoredResponse(response.status_code, headers, body)

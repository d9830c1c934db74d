"""Idempotency-Key over HTTP, against a test plugin whose routes count their invocations."""

from __future__ import annotations

import asyncio
import time
import uuid

import librefang
import pytest
from librefang.app import build_app
from librefang.errors import BadRequest
from librefang.idempotency import (
    IN_PROGRESS_LEASE_SECONDS,
    MAX_KEY_LENGTH,
    TTL_SECONDS,
    fingerprint,
    scope_key,
)
from librefang.routing import Router
from librefang.testing import make_client
from pydantic import BaseModel
from quart import Response

KEY = "idempotency-test-key-0123456789"


class ThingIn(BaseModel):
    name: str


class CountingPlugin:
    """Idempotent creating routes that count how often their handler really ran."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fail_next: str | None = None
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    def _count(self, route: str) -> int:
        self.calls[route] = self.calls.get(route, 0) + 1
        return self.calls[route]

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("idemtest")

        @router.post("/api/idemtest/things", cost=1, body=ThingIn, status=201, idempotent=True)
        async def create_thing(body: ThingIn):
            call = self._count("things")
            if body.name == "slow":
                self.entered.set()
                await self.gate.wait()
            if self.fail_next == "400":
                self.fail_next = None
                raise BadRequest("refused this time", code="refused")
            if self.fail_next == "500":
                self.fail_next = None
                raise RuntimeError("handler crashed")
            return {"id": str(uuid.uuid4()), "name": body.name, "call": call}

        @router.post("/api/idemtest/plain", cost=1, idempotent=True)
        async def create_plain():
            call = self._count("plain")
            return Response(f"plain call {call} {uuid.uuid4()}", status=202, mimetype="text/plain")

        @router.post("/api/idemtest/big", cost=1, idempotent=True)
        async def create_big():
            call = self._count("big")
            return Response(b"x" * (1024 * 1024 + 1), status=201, mimetype="application/octet-stream",
                            headers={"X-Call": str(call)})

        @router.post("/api/idemtest/plain-not-idempotent", cost=1)
        async def not_idempotent():
            return {"call": self._count("not_idempotent")}

        register(router)


@pytest.fixture
async def setup(make_kernel):
    plugin = CountingPlugin()
    kernel = await make_kernel(plugins={"idemtest": plugin}, load_entry_points=False)
    return kernel, make_client(build_app(kernel)), plugin


def key(value: str = KEY) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_same_key_and_body_replays_the_first_response_byte_for_byte(setup):
    kernel, client, plugin = setup
    first = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert first.status_code == 201
    body = await first.get_data()
    assert "Idempotent-Replayed" not in first.headers
    for _ in range(2):
        again = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
        assert again.status_code == 201
        assert await again.get_data() == body
        assert again.headers["Content-Type"] == first.headers["Content-Type"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["x-request-id"] != first.headers["x-request-id"]
    # The /api/v1 alias is the same route.
    aliased = await client.post("/api/v1/idemtest/things", json={"name": "a"}, headers=key())
    assert await aliased.get_data() == body
    assert plugin.calls["things"] == 1
    assert kernel.idempotency.replays == 3


async def test_non_json_responses_replay_with_their_status_and_content_type(setup):
    _, client, plugin = setup
    first = await client.post("/api/idemtest/plain", data=b"raw bytes", headers=key())
    assert first.status_code == 202
    again = await client.post("/api/idemtest/plain", data=b"raw bytes", headers=key())
    assert again.status_code == 202
    assert again.headers["Content-Type"] == first.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert await again.get_data() == await first.get_data()
    assert plugin.calls["plain"] == 1


async def test_without_a_key_every_request_runs(setup):
    _, client, plugin = setup
    one = await (await client.post("/api/idemtest/things", json={"name": "a"})).get_json()
    two = await (await client.post("/api/idemtest/things", json={"name": "a"})).get_json()
    assert one["id"] != two["id"]
    assert plugin.calls["things"] == 2


async def test_routes_that_did_not_opt_in_ignore_the_header(setup):
    _, client, plugin = setup
    for _ in range(2):
        response = await client.post("/api/idemtest/plain-not-idempotent", headers=key())
        assert response.status_code == 200
    assert plugin.calls["not_idempotent"] == 2


async def test_same_key_with_a_different_body_is_409(setup):
    _, client, plugin = setup
    assert (await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())).status_code == 201
    for other in ({"name": "b"}, {"name": "a", "extra": 1}):
        response = await client.post("/api/idemtest/things", json=other, headers=key())
        assert response.status_code == 409
        body = await response.get_json()
        assert body["code"] == "idempotency_key_reused"
        assert body["request_id"] == response.headers["x-request-id"]
    # A different query string is a different request too.
    response = await client.post("/api/idemtest/things?x=1", json={"name": "a"}, headers=key())
    assert response.status_code == 409
    assert plugin.calls["things"] == 1


async def test_concurrent_duplicate_is_409_while_the_first_runs(setup):
    _, client, plugin = setup
    first = asyncio.ensure_future(client.post("/api/idemtest/things", json={"name": "slow"}, headers=key()))
    await asyncio.wait_for(plugin.entered.wait(), 5)
    duplicate = await client.post("/api/idemtest/things", json={"name": "slow"}, headers=key())
    assert duplicate.status_code == 409
    assert (await duplicate.get_json())["code"] == "idempotency_in_progress"
    assert duplicate.headers["Retry-After"] == "1"
    plugin.gate.set()
    done = await asyncio.wait_for(first, 5)
    assert done.status_code == 201
    replay = await client.post("/api/idemtest/things", json={"name": "slow"}, headers=key())
    assert await replay.get_data() == await done.get_data()
    assert plugin.calls["things"] == 1


@pytest.mark.parametrize("failure", ["400", "500"])
async def test_failures_are_not_cached(setup, failure):
    kernel, client, plugin = setup
    plugin.fail_next = failure
    failed = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert failed.status_code == int(failure)
    assert "Idempotent-Replayed" not in failed.headers
    assert await kernel.idempotency.count() == 0
    retried = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert retried.status_code == 201
    assert (await retried.get_json())["call"] == 2
    replay = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert await replay.get_data() == await retried.get_data()
    assert plugin.calls["things"] == 2


async def test_invalid_body_is_not_cached(setup):
    kernel, client, plugin = setup
    response = await client.post("/api/idemtest/things", json={"nome": "a"}, headers=key())
    assert response.status_code == 400
    assert await kernel.idempotency.count() == 0
    assert "things" not in plugin.calls


async def test_oversized_responses_are_not_stored(setup):
    kernel, client, plugin = setup
    for expected in ("1", "2"):
        response = await client.post("/api/idemtest/big", headers=key())
        assert response.status_code == 201 and response.headers["X-Call"] == expected
    assert await kernel.idempotency.count() == 0


async def test_keys_are_scoped_per_route(setup):
    _, client, plugin = setup
    assert (await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())).status_code == 201
    assert (await client.post("/api/idemtest/plain", headers=key())).status_code == 202
    assert plugin.calls == {"things": 1, "plain": 1}


async def test_keys_are_scoped_per_principal(setup):
    kernel, _, _ = setup
    store = kernel.idempotency
    request_hash = fingerprint(b"{}", b"", "application/json")
    alice = scope_key("alice", "POST", "/api/idemtest/things", KEY)
    bob = scope_key("bob", "POST", "/api/idemtest/things", KEY)
    assert alice != bob
    assert await store.claim(alice, request_hash) is None
    assert await store.claim(bob, request_hash) is None  # not a conflict: another principal's key


@pytest.mark.parametrize("value", ["", "x" * (MAX_KEY_LENGTH + 1), "has space", "tab\tkey", "caf\u00e9"])
async def test_bad_keys_are_400(setup, value):
    _, client, plugin = setup
    response = await client.post("/api/idemtest/things", json={"name": "a"},
                                 headers={"Idempotency-Key": value.encode("utf-8").decode("latin-1")})
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "invalid_idempotency_key"
    assert "things" not in plugin.calls


async def test_longest_allowed_key_works(setup):
    _, client, _ = setup
    long_key = "k" * MAX_KEY_LENGTH
    first = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key(long_key))
    again = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key(long_key))
    assert await first.get_data() == await again.get_data()


async def test_entries_expire_after_24_hours_and_are_swept(setup):
    kernel, client, plugin = setup
    store = kernel.idempotency
    first = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert await store.count() == 1
    store.clock = lambda: time.time() + TTL_SECONDS - 60
    replay = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert await replay.get_data() == await first.get_data()
    store.clock = lambda: time.time() + TTL_SECONDS + 60
    fresh = await client.post("/api/idemtest/things", json={"name": "a"}, headers=key())
    assert fresh.status_code == 201 and await fresh.get_data() != await first.get_data()
    assert plugin.calls["things"] == 2
    # The sweep removes what has expired, and keeps the rest.
    await client.post("/api/idemtest/plain", headers=key("other"))
    assert await store.count() == 2
    store.clock = lambda: time.time() + 3 * TTL_SECONDS
    assert await store.sweep() == 2
    assert await store.count() == 0


async def test_abandoned_claims_are_retaken_after_the_lease(setup):
    kernel, client, plugin = setup
    store = kernel.idempotency
    body = b'{"name": "a"}'
    stale = scope_key("local", "POST", "/api/idemtest/things", KEY)
    store.clock = lambda: time.time() - IN_PROGRESS_LEASE_SECONDS - 60  # a claim by a process that died
    assert await store.claim(stale, fingerprint(body, b"", "application/json")) is None
    store.clock = time.time
    response = await client.post("/api/idemtest/things", data=body, headers={**key(), "Content-Type": "application/json"})
    assert response.status_code == 201
    assert plugin.calls["things"] == 1

"""GCRA rate limiter: the algorithm, bounded state (a million addresses), the route cost table, and
over HTTP: 429 + Retry-After, metrics, client address resolution, exemptions, the interface."""

from __future__ import annotations

import re

import librefang
import pytest
from librefang.app import build_app
from librefang.netutil import ProxyTrust
from librefang.ratelimit import DEFAULT_COST, GcraLimiter, RateLimiter, route_cost
from librefang.routing import Router
from librefang.testing import make_client

KEY = "rl-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def remote(ip: str = "203.0.113.5") -> dict:
    return {"client": (ip, 1234)}


async def build(make_kernel, config: str = "", plugins=None):
    kernel = await make_kernel(config=config, plugins=plugins or {}, load_entry_points=False)
    return kernel, make_client(build_app(kernel))


# -- the algorithm -------------------------------------------------------------------------------
def test_gcra_burst_refill_and_cost():
    limiter = GcraLimiter(60)  # one token per second, burst 60
    t0 = 1000.0
    assert all(limiter.take("a", 1, t0)[0] for _ in range(60))
    allowed, wait = limiter.take("a", 1, t0)
    assert not allowed and wait == pytest.approx(1.0)
    assert limiter.take("a", 1, t0 + 1.0)[0]  # one token back after one interval
    assert not limiter.take("a", 1, t0 + 1.0)[0]
    # Cost-aware: a cost-30 request needs 30 tokens.
    allowed, wait = limiter.take("a", 30, t0 + 10.0)
    assert not allowed and wait == pytest.approx(21.0)
    assert limiter.take("a", 30, t0 + 31.0)[0]
    # Other clients are independent, and refusals are counted.
    assert limiter.take("b", 60, t0)[0]
    assert limiter.denied == 3


def test_default_quota_is_500_per_minute():
    limiter = GcraLimiter(500)
    t0 = 50.0
    allowed = sum(limiter.take("c", DEFAULT_COST, t0)[0] for _ in range(200))
    assert allowed == 100  # 500 tokens of burst / cost 5
    assert limiter.take("c", 1, t0 + 0.12)[0]  # a token back every 120 ms


def test_a_million_distinct_addresses_never_exceed_the_table_size():
    # The addresses are IPv4 addresses as 32-bit integers (10.0.0.0 + i): formatting a million
    # dotted strings would triple the test's run time and prove nothing more about the bound.
    limiter = GcraLimiter(500, max_keys=100_000)
    take = limiter.take
    t0 = 10_000.0
    base = 0x0A000000
    peak = 0
    for i in range(1_000_000):
        take(base + i, DEFAULT_COST, t0 + i * 1e-6)  # type: ignore[arg-type]
        size = len(limiter)
        if size > peak:
            peak = size
    assert peak <= 100_000
    assert len(limiter) <= 100_000
    assert limiter.evicted > 0
    # A client seen a moment ago is still tracked (a flood does not reset everyone at once).
    recent = base + 999_999
    assert not all(limiter.take(recent, 100, t0 + 1.0)[0] for _ in range(5))  # type: ignore[arg-type]


def test_stale_clients_disappear_without_traffic_from_them():
    limiter = GcraLimiter(60)  # refill period 60 s
    t0 = 500.0
    for i in range(1000):
        limiter.take(f"192.0.2.{i % 250}-{i}", 1, t0)
    assert len(limiter) == 1000
    limiter.take("someone-else", 1, t0 + 61)  # one period later: the generation rotates
    limiter.take("someone-else", 1, t0 + 122)  # two periods later: the old generation is dropped
    assert len(limiter) == 1
    # Explicit sweep removes every fully refilled client.
    for i in range(10):
        limiter.take(f"x{i}", 1, t0 + 130)
    assert limiter.sweep(t0 + 1000) == 11 and len(limiter) == 0


def test_state_survives_promotion_between_generations():
    limiter = GcraLimiter(60, max_keys=4)  # two entries per generation
    t0 = 0.0
    for _ in range(60):
        limiter.take("heavy", 1, t0)
    limiter.take("a", 1, t0)  # young is full: rotates, "heavy" goes to the old generation
    assert not limiter.take("heavy", 1, t0)[0]  # found in old, promoted, still exhausted
    assert len(limiter) <= 4


def test_limiter_implements_the_interface():
    assert isinstance(GcraLimiter(10), RateLimiter)
    described = GcraLimiter(10, max_keys=500).describe()
    assert described["algorithm"] == "GCRA" and described["max_tracked_clients"] == 500


# -- the cost table --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "cost"),
    [
        ("GET", "/api/health", 1), ("POST", "/api/health", 1), ("GET", "/api/v1/health", 1),
        ("GET", "/api/ready", 1), ("GET", "/api/status", 1), ("GET", "/api/version", 1),
        ("GET", "/api/tools", 1), ("GET", "/api/providers", 1), ("GET", "/api/approvals/count", 1),
        ("GET", "/api/agents", 2), ("GET", "/api/skills", 2), ("GET", "/api/peers", 2), ("GET", "/api/config", 2),
        ("GET", "/api/usage", 3),
        ("GET", "/api/audit/recent", 5), ("GET", "/api/agents/<id>", 5), ("DELETE", "/api/agents/<id>", 5),
        ("GET", "/api/marketplace/search", 10), ("PATCH", "/api/agents/<id>", 10),
        ("POST", "/api/skills/uninstall", 10),
        ("POST", "/api/agents/<id>/message", 30), ("POST", "/api/agents/<id>/message/stream", 30),
        ("GET", "/api/agents/<id>/message", 5),
        ("POST", "/api/agents", 50), ("POST", "/api/pairing/complete", 50), ("POST", "/api/skills/install", 50),
        ("POST", "/api/workflows/<id>/run", 100), ("POST", "/api/hands/<id>/run", 100), ("POST", "/api/migrate", 100),
        ("POST", "/api/agents/", 50),
    ],
)
def test_route_cost_table(method, path, cost):
    assert route_cost(method, path) == cost


async def test_core_routes_declare_the_reference_costs(make_kernel):
    kernel = await make_kernel(load_entry_points=False)
    declared = {(s.method, s.path): s.cost for s in kernel.routes.specs.values() if s.plugin == "core"}
    expected = {
        ("GET", "/api/health"): 1, ("GET", "/api/status"): 1, ("GET", "/api/version"): 1,
        ("GET", "/api/versions"): 1, ("GET", "/api/config"): 2, ("GET", "/api/audit/recent"): 5,
        ("GET", "/api/audit/verify"): 5, ("GET", "/api/config/schema"): 1,
    }
    for route, cost in expected.items():
        assert declared[route] == cost, route


async def test_every_installed_route_in_the_table_declares_its_cost(make_kernel):
    """Any route of any installed plugin that the reference table prices must declare that price."""
    kernel = await make_kernel()
    wrong = [
        f"{s.method} {s.path}: declares {s.cost}, table says {route_cost(s.method, s.path)}"
        for s in kernel.routes.specs.values()
        if route_cost(s.method, s.path) != DEFAULT_COST and s.cost != route_cost(s.method, s.path)
    ]
    assert not wrong, wrong


def test_router_defaults_to_the_table():
    router = Router("costs")

    @router.post("/api/agents/<agent_id>/message")
    async def message(agent_id):
        return {}

    @router.get("/api/widgets", cost=7)
    async def widgets():
        return {}

    costs = {(s.method, s.path): s.cost for s in router.specs}
    assert costs == {("POST", "/api/agents/<agent_id>/message"): 30, ("GET", "/api/widgets"): 7}


# -- over HTTP -----------------------------------------------------------------------------------
async def test_429_with_retry_after_and_counted_in_metrics(make_kernel):
    _, client = await build(make_kernel, "[rate_limit]\napi_requests_per_minute = 3\n")
    for _ in range(3):
        assert (await client.get("/api/health", scope_base=remote())).status_code == 200
    for _ in range(2):
        response = await client.get("/api/health", scope_base=remote())
        assert response.status_code == 429
        body = await response.get_json()
        assert body["error"] == "Rate limit exceeded" and body["code"] == "rate_limited"
        assert body["request_id"] == response.headers["x-request-id"]
        assert int(response.headers["Retry-After"]) == 20  # one token per 20 s at 3/min
    metrics = await (await client.get("/api/metrics")).get_data(as_text=True)
    assert re.search(r"^librefang_rate_limit_denied_total 2\.0$", metrics, re.M), metrics
    security = await (await client.get("/api/security")).get_json()
    limiter = next(s for s in security["systems"] if s["name"] == "rate_limiter")["config"]
    assert limiter["denied_total"] == 2 and limiter["api_requests_per_minute"] == 3


async def test_costs_are_charged_per_route_and_per_client(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n[rate_limit]\napi_requests_per_minute = 10\n')
    # /api/security costs 5: two fit in a burst of 10, the third does not.
    assert (await client.get("/api/security", headers=AUTH, scope_base=remote())).status_code == 200
    assert (await client.get("/api/security", headers=AUTH, scope_base=remote())).status_code == 200
    assert (await client.get("/api/security", headers=AUTH, scope_base=remote())).status_code == 429
    # Another address has its own quota: ten cost-1 health checks fit.
    other = remote("198.51.100.20")
    assert all([(await client.get("/api/health", scope_base=other)).status_code == 200 for _ in range(10)])
    assert (await client.get("/api/health", scope_base=other)).status_code == 429


async def test_failed_auth_attempts_pay_too(make_kernel):
    _, client = await build(make_kernel, f'api_key = "{KEY}"\n[rate_limit]\napi_requests_per_minute = 3\n')
    statuses = [(await client.get("/api/health/detail", headers={"Authorization": f"Bearer guess{i}"},
                                  scope_base=remote())).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


async def test_loopback_without_forwarding_headers_is_exempt(make_kernel):
    _, client = await build(make_kernel, "[rate_limit]\napi_requests_per_minute = 1\n")
    assert all([(await client.get("/api/health")).status_code == 200 for _ in range(20)])
    assert all([(await client.get("/api/health", scope_base={"client": ("::1", 9)})).status_code == 200
                for _ in range(5)])
    # A loopback peer that forwards for someone else (a local proxy, not trusted) is limited.
    forwarded = {"X-Forwarded-For": "203.0.113.50"}
    assert (await client.get("/api/health", headers=forwarded)).status_code == 200
    assert (await client.get("/api/health", headers=forwarded)).status_code == 429


async def test_shell_and_static_assets_are_exempt(make_kernel):
    _, client = await build(make_kernel, "[rate_limit]\napi_requests_per_minute = 1\n")
    assert (await client.get("/api/health", scope_base=remote())).status_code == 200
    assert (await client.get("/api/health", scope_base=remote())).status_code == 429
    for path in ("/", "/static/app.js", "/webchat/chat.css", "/favicon.ico", "/", "/static/app.js"):
        assert (await client.get(path, scope_base=remote())).status_code == 404, path


async def test_forwarding_headers_only_from_trusted_proxies(make_kernel):
    config = 'trusted_proxies = ["10.0.0.0/8"]\n[rate_limit]\napi_requests_per_minute = 2\n'
    _, client = await build(make_kernel, config)
    proxy = remote("10.1.2.3")

    async def via_proxy(xff: str) -> int:
        return (await client.get("/api/health", headers={"X-Forwarded-For": xff}, scope_base=proxy)).status_code

    # Behind the trusted proxy each real client has its own quota.
    assert [await via_proxy("203.0.113.1") for _ in range(3)] == [200, 200, 429]
    assert [await via_proxy("203.0.113.2") for _ in range(2)] == [200, 200]
    # The right-most address that is not itself a trusted proxy is the client.
    assert await via_proxy("203.0.113.3, 10.9.9.9") == 200
    assert await via_proxy("198.51.100.1, 203.0.113.3") == 200
    assert await via_proxy("203.0.113.3") == 429  # same client as the two requests above
    # An untrusted peer cannot pick its bucket by sending a forwarding header.
    outsider = remote("198.51.100.99")
    codes = [(await client.get("/api/health", headers={"X-Forwarded-For": f"192.0.2.{i}"},
                               scope_base=outsider)).status_code for i in range(3)]
    assert codes == [200, 200, 429]


def test_proxy_trust_resolution():
    trust = ProxyTrust(["10.0.0.0/8", "::1"])
    assert trust.client_ip("203.0.113.5", {"x-forwarded-for": "1.2.3.4"}) == "203.0.113.5"
    assert trust.client_ip("10.0.0.1", {"x-real-ip": "192.0.2.7"}) == "192.0.2.7"
    assert trust.client_ip("10.0.0.1", {"cf-connecting-ip": "192.0.2.8", "x-real-ip": "192.0.2.7"}) == "192.0.2.8"
    assert trust.client_ip("10.0.0.1", {"forwarded": 'for="[2001:db8::1]:4711";proto=https'}) == "2001:db8::1"
    assert trust.client_ip("10.0.0.1", {"forwarded": "for=192.0.2.60:80, for=10.0.0.9"}) == "10.0.0.9"
    assert trust.client_ip("10.0.0.1", {"x-forwarded-for": "not-an-ip"}) == "10.0.0.1"
    assert trust.client_ip("10.0.0.1", {"x-real-ip": "x" * 500}) == "10.0.0.1"
    assert trust.client_ip("::1", {"x-forwarded-for": "192.0.2.1, 10.0.0.2"}) == "192.0.2.1"
    assert trust.client_ip("::ffff:10.0.0.1", {"x-real-ip": "192.0.2.9"}) == "192.0.2.9"
    from librefang.errors import ConfigError

    with pytest.raises(ConfigError, match="trusted_proxies"):
        ProxyTrust(["not a network"])


# -- the interface ---------------------------------------------------------------------------------
class RecordingLimiter:
    """A second implementation of the interface (what a shared-store limiter would plug in as)."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.calls: list[tuple[str, int]] = []
        self.denied = 0

    async def acquire(self, key: str, cost: int) -> tuple[bool, float]:
        self.calls.append((key, cost))
        if key in self.refuse:
            self.denied += 1
            return False, 7.2
        return True, 0.0

    def __len__(self) -> int:
        return len({key for key, _ in self.calls})

    def describe(self) -> dict:
        return {"backend": "recording", "tracked_clients": len(self)}


class CostPlugin:
    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("costly")

        @router.post("/api/costly/<item_id>/run")
        async def run_item(item_id):
            return {"ran": item_id}

        register(router)


async def test_edge_uses_any_rate_limiter_implementation(make_kernel):
    kernel, client = await build(make_kernel, plugins={"costly": CostPlugin()})
    recording = RecordingLimiter({"198.51.100.66"})
    kernel.edge.use_limiter(recording)
    assert (await client.post("/api/costly/abc/run", scope_base=remote())).status_code == 401  # no key: remote
    refused = await client.get("/api/health", scope_base=remote("198.51.100.66"))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "8"
    assert recording.calls == [("203.0.113.5", 100), ("198.51.100.66", 1)]
    kernel.edge.configure()  # a config reload keeps the plugged-in limiter
    assert kernel.edge.limiter is recording
    with pytest.raises(TypeError):
        kernel.edge.use_limiter(object())  # type: ignore[arg-type]


class BrokenLimiter(RecordingLimiter):
    """A shared-store limiter whose store is down."""

    async def acquire(self, key: str, cost: int) -> tuple[bool, float]:
        raise ConnectionError("limiter store at redis://secret-host unreachable")


async def test_a_failing_limiter_gives_a_json_500_not_a_crash(make_kernel, caplog):
    kernel, client = await build(make_kernel)
    kernel.edge.use_limiter(BrokenLimiter(set()))
    response = await client.get("/api/health", scope_base=remote())
    assert response.status_code == 500
    body = await response.get_json()
    assert body["code"] == "internal_error" and body["request_id"] == response.headers["x-request-id"]
    assert "redis" not in await response.get_data(as_text=True)
    assert any(response.headers["x-request-id"] in r.getMessage() and "ConnectionError" in r.getMessage()
               for r in caplog.records if r.name == "librefang.edge")
    assert (await client.get("/api/health")).status_code == 200  # loopback is exempt: unaffected

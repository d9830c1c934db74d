"""HTTP and kernel metrics, exposed in the Prometheus text format.

The hot path only touches plain Python counters (a dict increment and a bucket index per request):
prometheus_client's ``Counter``/``Histogram`` children take a lock on every update, and importing
its exposition module costs a noticeable share of a cold start. The counters are turned into
Prometheus metric families only when ``/api/metrics`` is scraped, and prometheus_client is
imported then, not before.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel

# Upper bounds (seconds) of the request-latency histogram buckets; +Inf is implicit.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 5000  # bounded label set (route templates only, but a bug must not grow it without end)


def process_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc, else psutil)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


class Metrics:
    """Per-kernel HTTP counters (plain ints, updated by the edge) and their Prometheus rendering.

    ``in_flight``, ``rate_limited`` and ``auth_failures`` are plain integers the edge updates
    directly; :meth:`observe` counts one finished request.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.in_flight = 0
        self.rate_limited = 0
        self.auth_failures = 0
        self._requests: dict[tuple[str, str, int], int] = {}
        # (method, route) -> one count per bucket (not cumulative), then +Inf, then the sum of seconds.
        self._latency: dict[tuple[str, str], list[float]] = {}
        self._registry: Any = None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request to ``route`` (a route template) that answered ``status``."""
        requests = self._requests
        key = (method, route, status)
        count = requests.get(key)
        if count is None:
            if len(requests) >= MAX_SERIES:
                requests.clear()
                self._latency.clear()
            count = 0
        requests[key] = count + 1
        series = self._latency.get((method, route))
        if series is None:
            series = self._latency[(method, route)] = [0] * (len(LATENCY_BUCKETS) + 2)
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def requests_total(self, method: str, route: str, status: int) -> int:
        """How many ``method route`` requests answered ``status`` so far."""
        return self._requests.get((method, route, status), 0)

    def collect(self) -> Iterable[Any]:
        """Prometheus metric families of the HTTP counters and of the kernel (read now)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily(
            "librefang_http_requests_total", "HTTP requests by route template and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in list(self._requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "librefang_http_request_duration_seconds", "HTTP request latency by route template",
            labels=["method", "route"],
        )
        bounds = [*(_float_text(b) for b in LATENCY_BUCKETS), "+Inf"]
        for (method, route), series in list(self._latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, series[:-1], strict=True):
                cumulative += int(count)
                buckets.append((bound, cumulative))
            latency.add_metric([method, route], buckets, series[-1])
        yield latency
        yield GaugeMetricFamily("librefang_http_requests_in_flight", "Requests being served", value=self.in_flight)
        yield CounterMetricFamily("librefang_rate_limit_denied_total", "Requests denied by the rate limiter",
                                  value=self.rate_limited)
        yield CounterMetricFamily("librefang_auth_failures_total", "Requests refused for authentication",
                                  value=self.auth_failures)
        yield from _kernel_families(self.kernel, GaugeMetricFamily)

    def render(self) -> bytes:
        """The text exposition of every metric (imports prometheus_client on the first scrape)."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        return generate_latest(self._registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        return self.metrics.collect()


def _float_text(value: float) -> str:
    # The "le" label text prometheus_client itself writes for a bucket bound (0.001, 1.0, 10.0).
    return repr(float(value))


def _kernel_families(kernel: Kernel, gauge: Any) -> Iterable[Any]:
    """Values read at scrape time from the kernel."""
    yield gauge("librefang_uptime_seconds", "Seconds since the daemon started", value=kernel.uptime)
    yield gauge("librefang_plugins_loaded", "Plugins loaded and running", value=len(kernel.plugins.loaded()))
    yield gauge(
        "librefang_plugins_failed", "Plugins that failed to load or start",
        value=sum(1 for r in kernel.plugins.records.values() if r.error),
    )
    yield gauge("librefang_process_rss_bytes", "Resident memory of the daemon", value=process_rss_bytes())
    yield gauge("librefang_event_bus_dropped_events", "Events dropped by slow subscribers",
                value=kernel.bus.dropped_total)
    # Read by the soak test (bench/soak.py): tasks must return to their baseline after load.
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside the event loop's thread
        tasks = 0
    yield gauge("librefang_asyncio_tasks", "Asyncio tasks alive in the daemon's event loop", value=tasks)
    info = gauge("librefang_info", "Build information", labels=["version"])
    info.add_metric([kernel.version], 1)
    yield info

"""Prometheus metrics (prometheus_client), one registry per kernel."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel


def process_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc, else psutil)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


class _KernelCollector:
    """Values read at scrape time from the kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def collect(self) -> Iterable[Any]:
        k = self.kernel
        yield GaugeMetricFamily("librefang_uptime_seconds", "Seconds since the daemon started", value=k.uptime)
        yield GaugeMetricFamily("librefang_plugins_loaded", "Plugins loaded and running", value=len(k.plugins.loaded()))
        yield GaugeMetricFamily(
            "librefang_plugins_failed", "Plugins that failed to load or start",
            value=sum(1 for r in k.plugins.records.values() if r.error),
        )
        yield GaugeMetricFamily("librefang_process_rss_bytes", "Resident memory of the daemon", value=process_rss_bytes())
        yield GaugeMetricFamily("librefang_event_bus_dropped_events", "Events dropped by slow subscribers",
                                value=k.bus.dropped_total)
        # Read by the soak test (bench/soak.py): tasks must return to their baseline after load.
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop's thread
            tasks = 0
        yield GaugeMetricFamily("librefang_asyncio_tasks", "Asyncio tasks alive in the daemon's event loop", value=tasks)
        info = GaugeMetricFamily("librefang_info", "Build information", labels=["version"])
        info.add_metric([k.version], 1)
        yield info


class Metrics:
    """HTTP and kernel metrics."""

    def __init__(self, kernel: Kernel) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "librefang_http_requests_total", "HTTP requests by route template and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "librefang_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight = Gauge("librefang_http_requests_in_flight", "Requests being served", registry=self.registry)
        self.rate_limited = Counter(
            "librefang_rate_limit_denied_total", "Requests denied by the rate limiter", registry=self.registry
        )
        self.auth_failures = Counter("librefang_auth_failures_total", "Requests refused for authentication",
                                     registry=self.registry)
        self.registry.register(_KernelCollector(kernel))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        pair = self._children.get(key)
        if pair is None:
            if len(self._children) > 5000:  # bounded label set (route templates only, but be safe)
                self._children.clear()
            pair = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

* ``logit_swarm_queue_length``: requests waiting to start decoding;
* ``logit_swarm_running_rows``: rows (prompt × n) in the running batch;
* ``logit_swarm_generated_units_total{unit}``: generated tokens or bytes (rate() = units/s);
* ``logit_swarm_units_per_second{unit}``: the same rate over the last few seconds, as a gauge;
* ``logit_swarm_time_to_first_unit_seconds``: histogram, request arrival to its first unit;
* ``logit_swarm_request_latency_seconds``: histogram, arrival to the last unit / the answer;
* ``logit_swarm_requests_total{endpoint,status}``: answered requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Seconds over which ``units_per_second`` is averaged.
RATE_WINDOW_S = 5.0


class Metrics:
    """The server's metrics; ``unit`` is "token" or "byte"."""

    def __init__(self, unit: str):
        self.registry = CollectorRegistry()
        self.unit = unit
        r = self.registry
        self.queue_length = Gauge("logit_swarm_queue_length", "Requests waiting to start decoding", registry=r)
        self.running_rows = Gauge("logit_swarm_running_rows", "Rows in the running decode batch", registry=r)
        self.generated = Counter("logit_swarm_generated_units", "Generated units (tokens or bytes)", ["unit"],
                                 registry=r)
        self.rate = Gauge("logit_swarm_units_per_second", f"Generated units per second over {RATE_WINDOW_S:g} s",
                          ["unit"], registry=r)
        self.ttft = Histogram("logit_swarm_time_to_first_unit_seconds", "Arrival to first generated unit",
                              buckets=BUCKETS, registry=r)
        self.latency_h = Histogram("logit_swarm_request_latency_seconds", "Arrival to complete answer",
                                   buckets=BUCKETS, registry=r)
        self.requests = Counter("logit_swarm_requests", "Answered requests", ["endpoint", "status"], registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def set_load(self, waiting: int, running: int) -> None:
        """Queue length and running rows (engine thread, every turn)."""
        self.queue_length.set(waiting)
        self.running_rows.set(running)

    def units(self, n: int) -> None:
        """``n`` units were generated just now."""
        self.generated.labels(self.unit).inc(n)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            self.rate.labels(self.unit).set(sum(k for _, k in self._recent) / RATE_WINDOW_S)

    def first_unit(self, seconds: float) -> None:
        """Time to first unit of one request."""
        self.ttft.observe(seconds)

    def latency(self, seconds: float) -> None:
        """Latency of one request."""
        self.latency_h.observe(seconds)

    def answered(self, endpoint: str, status: int) -> None:
        """Count one answered request."""
        self.requests.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
